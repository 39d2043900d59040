from .grpo import main

main()
