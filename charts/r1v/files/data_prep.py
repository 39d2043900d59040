"""Fill the shared volume with what a run needs, then write the marker the training pods wait for.

Runs in the evaluator image (it has huggingface_hub) as the chart's data-prep Job:
  * the model snapshot (e.g. Qwen/Qwen2-VL-2B-Instruct) -> --model-dir
  * the CLEVR-70k dataset snapshot (parquet files)      -> --dataset-dir
  * SuperCLEVR-200: the question file (checked by sha256) and, out of SuperCLEVR's images.zip, only
    the images the questions name                         -> --superclevr-dir/{FILE.jsonl, images/}

Every step is idempotent: a Job retry (or a later release on the same volume) skips what is there.
Model and data set are fetched at one Hub commit each: --model-revision/--dataset-revision resolved
to its commit, else the commit an earlier run recorded in the folder, else the Hub's current one; the
commit is recorded in the folder (r1v_common.checkpoints.SOURCE_RECORD), where the trainer reads it.
Part of the r1v chart; shipped to the pod through a ConfigMap.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import posixpath
import shutil
import signal
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from r1v_common.checkpoints import SOURCE_RECORD


def _atomic_write(path: Path, data: bytes) -> None:
    # A pod killed mid-write must never leave a file that later looks complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fetch(url: str, dest: Path) -> Path:
    """Download url to dest unless dest already exists (downloads go to a temp name first)."""
    if dest.exists():
        print(f"have {dest}", flush=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", flush=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with urllib.request.urlopen(url, timeout=120) as response, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def needed_images(questions: Path) -> set[str]:
    """File names of the images the question file refers to ("./images/X.png" -> "X.png")."""
    names = set()
    for line in questions.read_text().splitlines():
        if line.strip():
            names.add(posixpath.basename(json.loads(line)["image_path"]))
    return names


def extract_images(archive: Path, names: set[str], images_dir: Path) -> None:
    """Extract only `names` from the archive into images_dir, whatever folder they sit in there."""
    missing = {n for n in names if not (images_dir / n).exists()}
    if not missing:
        print(f"have all {len(names)} images in {images_dir}", flush=True)
        return
    images_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = posixpath.basename(info.filename)
            if name in missing and not info.is_dir():
                _atomic_write(images_dir / name, zf.read(info))
                missing.discard(name)
    if missing:
        raise SystemExit(f"{archive} lacks {len(missing)} images the questions need, e.g. {sorted(missing)[:3]}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_checked(url: str, dest: Path, sha256: str | None) -> Path:
    """fetch(), and the file must have this sha256: a file already there with another (e.g. from a
    branch's head) is fetched again; a download with another is removed and the run stops (exit 2)."""
    fetch(url, dest)
    if not sha256 or _sha256(dest) == sha256:
        return dest
    print(f"{dest}: sha256 {_sha256(dest)} is not {sha256}; downloading it again", flush=True)
    dest.unlink()
    fetch(url, dest)
    got = _sha256(dest)
    if got != sha256:
        dest.unlink()
        print(f"data_prep: error: {url} has sha256 {got}, superclevr.questionsSha256 says {sha256}; point "
              "superclevr.questionsUrl at the pinned commit, or set questionsSha256 to the file you mean",
              file=sys.stderr)
        raise SystemExit(2)
    return dest


def prepare_superclevr(questions_url: str, images_url: str, out_dir: Path, keep_zip: bool = False,
                       questions_sha256: str | None = None) -> Path:
    questions = fetch_checked(questions_url, out_dir / posixpath.basename(questions_url), questions_sha256)
    names = needed_images(questions)
    images_dir = out_dir / "images"
    if all((images_dir / n).exists() for n in names):
        print(f"have all {len(names)} SuperCLEVR images", flush=True)
        return questions
    archive = fetch(images_url, out_dir / posixpath.basename(images_url))
    extract_images(archive, names, images_dir)
    if not keep_zip:
        archive.unlink()  # several GB, of which the 200 images used are a few MB
    return questions


def recorded_revision(dest: Path, repo_id: str, repo_type: str) -> str | None:
    """The commit an earlier run fetched `repo_id` at into dest, or None."""
    try:
        record = json.loads((dest / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("repo_id") == repo_id and record.get("repo_type") == repo_type:
        return record.get("revision") or None
    return None


def resolve_revision(repo_id: str, repo_type: str, revision: str | None, token: str | None) -> str:
    """The Hub commit of `revision` (a branch, tag or commit; None = the default branch's head)."""
    from huggingface_hub import HfApi

    return HfApi(token=token).repo_info(repo_id, repo_type=repo_type, revision=revision).sha


def snapshot(repo_id: str, dest: Path, repo_type: str, revision: str | None = None) -> str:
    """Downloads repo_id at one commit into dest, records it there, and returns it. `revision` None:
    the commit an earlier run recorded in dest (a retry or a later release keeps it), else the Hub's
    current one, resolved once."""
    # Imported here so the SuperCLEVR part works (and is testable) without the Hub client.
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    commit = (resolve_revision(repo_id, repo_type, revision, token) if revision
              else recorded_revision(dest, repo_id, repo_type) or resolve_revision(repo_id, repo_type, None, token))
    print(f"downloading {repo_type} {repo_id}@{commit} -> {dest}", flush=True)
    snapshot_download(repo_id=repo_id, repo_type=repo_type, revision=commit, local_dir=str(dest), token=token)
    _atomic_write(dest / SOURCE_RECORD, (json.dumps({"repo_id": repo_id, "repo_type": repo_type, "revision": commit,
                                                     "requested": revision or "default branch"}, indent=1)
                                         + "\n").encode())
    return commit


def write_marker(marker: Path, contents: dict) -> None:
    contents = dict(contents, finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat())
    _atomic_write(marker, (json.dumps(contents, indent=2) + "\n").encode())
    print(f"wrote {marker}", flush=True)


def _terminate(signum, frame):
    # As PID 1 of a container Python ignores SIGTERM and the pod waits out its grace period. Every
    # write goes to a temp name first and downloads resume, so stopping here loses nothing; os._exit
    # because the Hub client's download threads would otherwise be joined first.
    print("data prep: stopped by SIGTERM; a retry resumes the downloads (exit 143)", file=sys.stderr, flush=True)
    os._exit(143)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-id", required=True)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--model-revision", help="Hub branch, tag or commit (default: the recorded or current commit)")
    p.add_argument("--dataset-id", required=True)
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument("--dataset-revision", help="as --model-revision")
    p.add_argument("--superclevr-questions-url", required=True)
    p.add_argument("--superclevr-questions-sha256", help="refuse a question file with another sha256")
    p.add_argument("--superclevr-images-url", required=True)
    p.add_argument("--superclevr-dir", type=Path, required=True)
    p.add_argument("--marker", type=Path, required=True)
    p.add_argument("--keep-zip", action="store_true")
    a = p.parse_args(argv)

    model_revision = snapshot(a.model_id, a.model_dir, "model", a.model_revision)
    dataset_revision = snapshot(a.dataset_id, a.dataset_dir, "dataset", a.dataset_revision)
    questions = prepare_superclevr(a.superclevr_questions_url, a.superclevr_images_url, a.superclevr_dir,
                                   keep_zip=a.keep_zip, questions_sha256=a.superclevr_questions_sha256)
    write_marker(a.marker, {"model": str(a.model_dir), "model_revision": model_revision,
                            "dataset": str(a.dataset_dir), "dataset_revision": dataset_revision,
                            "superclevr_questions": str(questions),
                            "superclevr_questions_sha256": a.superclevr_questions_sha256})
    return 0


if __name__ == "__main__":
    sys.exit(main())
