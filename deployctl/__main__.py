"""`deployctl` and `python -m deployctl`: a halt takes the fast door (cli/fasthalt.py), everything else Typer's."""

import sys


def main() -> None:
    """Run `halt` through cli/fasthalt.py if that is the command line, else the Typer app; exit with its code."""
    from deployctl.cli import streams

    streams.protect()  # before anything is written or opened: output can never end a run
    from deployctl.cli import fasthalt

    code = fasthalt.run(sys.argv[1:])
    if code is not None:
        streams.exit_now(code)
    from deployctl.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
