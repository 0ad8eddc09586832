"""`python -m service` runs the `poseserve` command line."""

from service.cli import main

main()
