"""The one place a Qwen2-VL processor is built: the trainer, the evaluator and the benchmark call
`load_processor`, so every part feeds a model the same pixels.

Imports only transformers (the evaluator's image has no TRL).

R1-V ran transformers 4.49's slow, PIL-based Qwen2-VL image processor. transformers 5's AutoProcessor
picks the torchvision backend instead, whose resize gives pixel_values up to 0.03 apart (about two
grey levels) on 480x320 and 640x480 images; the PIL backend gives R1-V's pixels exactly. AutoProcessor
cannot take `backend="pil"` itself (the video processor has no PIL backend and the load fails), so
the image processor is loaded on its own and put in place. (Passed as `image_processor=` to
AutoProcessor it also lands in the tokenizer's init kwargs, and saving a checkpoint fails.)

`image_problem` is the one image check of both programs: what would make this processor (or the
pixels it gives the model) fail on an image, checked before the first step or question.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

IMAGE_BACKENDS = ("pil", "torchvision")

# Qwen2-VL's smart_resize raises for max(height, width) / min(height, width) over 200.
MAX_ASPECT_RATIO = 200
# PIL's decompression-bomb bound (about 89 megapixels): a bigger image is refused before it is decoded
# (decoded, one such image takes hundreds of MB of a data loader's memory; the processor then
# shrinks it to max_pixels anyway).
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Colour modes whose RGB pixels need no colour profile; the processor converts them (alpha over white).
# Refused: CMYK (ink; its colours depend on an ICC profile PIL does not apply, so a naive conversion
# gives other colours than the question's), 16- and 32-bit modes (I;16, I, F: the conversion saturates
# them, mostly to white), LAB and HSV.
RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1"})
# Seconds one image may take to open and decode (a stalled network volume, a pathological file).
IMAGE_TIMEOUT = 30.0


class _TooSlow(Exception):
    pass


class _Refused(Exception):
    """The path is not one to open: the message says why."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raises _TooSlow in the block after `seconds` (SIGALRM: the main thread only; elsewhere no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, a regular file. Anything else is refused before it is opened for reading:
    opening a FIFO blocks until a writer comes, and a device may never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _Refused(f"image not found: {path}") from None
    if not stat.S_ISREG(mode):
        raise _Refused(f"image {path} is {_kind(mode)}, not a regular file")
    # O_NONBLOCK: should the path have become a FIFO since the stat, the open does not wait.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Refused(f"image {path} is {_kind(os.fstat(fd).st_mode)}, not a regular file")
        return f.read()


def decoded_image_problem(image: Image.Image) -> str | None:
    """Why the processor cannot take `image` (opened, decoded or not), or None."""
    width, height = image.size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height})"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return (f"aspect ratio {max(width, height) / min(width, height):.0f} of a {width}x{height} image is over "
                f"{MAX_ASPECT_RATIO} (Qwen2-VL's smart_resize refuses it)")
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} image is over {MAX_IMAGE_PIXELS} pixels"
    if image.mode not in RGB_MODES:
        return f"colour mode {image.mode} (accepted: {', '.join(sorted(RGB_MODES))})"
    return None


def _describe(value) -> str:
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{kind.get(type(value), type(value).__name__)} ({str(value)[:40]})"


def image_problem(image, timeout: float | None = IMAGE_TIMEOUT) -> str | None:
    """Why `image` cannot be trained or evaluated on, or None: it decodes whole, within `timeout`
    seconds, and the processor takes it (`decoded_image_problem`). `image` is a path, raw bytes,
    datasets' raw {"bytes", "path"}, or a PIL image; any other value (a number, a list) is named."""
    if image is None:
        return "no image"
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        image = image.get("bytes") or image.get("path")
        if image is None:
            return "no image"
    if isinstance(image, str) and not image:
        return "no image"
    if not isinstance(image, (str, os.PathLike, bytes, Image.Image)):
        return f"image is {_describe(image)}, not a path or an image"
    try:
        with _time_limit(timeout):
            if isinstance(image, Image.Image):
                image.load()
                return decoded_image_problem(image)
            data = image if isinstance(image, bytes) else _read_regular_file(image)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as opened:
                    # Size and mode come from the header: refuse before decoding what would be refused anyway.
                    if problem := decoded_image_problem(opened):
                        return problem
                    opened.load()  # decodes every pixel: a truncated file fails here, not in a training step
        return None
    except _TooSlow:
        return f"image took over {timeout:g} s to read and decode"
    except _Refused as exc:
        return str(exc)
    except Exception as exc:  # PIL raises many types for bad files; every one makes the row unusable
        return f"unreadable image ({type(exc).__name__}: {exc})"


def load_processor(path: str | Path, *, image_backend: str = "pil", min_pixels: int | None = None,
                   max_pixels: int | None = None, revision: str | None = None, padding_side: str = "left"):
    """The processor saved at `path` (a folder or Hub id), its image processor on `image_backend`.

    `min_pixels`/`max_pixels` set Qwen2-VL's pixel budget per image (R1-V: 3136 and 401408); left
    None, the saved value is kept. Prompts are padded on `padding_side` (left: generation appends
    on the right).
    """
    from transformers import AutoImageProcessor, AutoProcessor

    if image_backend not in IMAGE_BACKENDS:
        raise ValueError(f"image_backend {image_backend!r}: choose one of {', '.join(IMAGE_BACKENDS)} "
                         "(pil gives R1-V's pixels)")
    kwargs = {"revision": revision} if revision else {}
    image_processor = AutoImageProcessor.from_pretrained(path, backend=image_backend, **kwargs)
    if min_pixels or max_pixels:
        # transformers 5's form of the budget is size={shortest,longest}_edge (min_pixels/max_pixels
        # are deprecated); an unset bound keeps the saved value.
        size = image_processor.size
        image_processor = AutoImageProcessor.from_pretrained(path, backend=image_backend, size={
            "shortest_edge": min_pixels or size["shortest_edge"],
            "longest_edge": max_pixels or size["longest_edge"],
        }, **kwargs)
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    processor.image_processor = image_processor
    processor.tokenizer.padding_side = padding_side
    return processor
