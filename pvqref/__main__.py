"""Command line: ``python -m pvqref assets`` checks (and caches) the model and text assets."""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvqref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assets", help="locate the model and text assets, build the fp32 cache, "
                                  "print a summary")
    args = parser.parse_args(argv)
    if args.command == "assets":
        from pvqref import data
        try:
            summary = data.check_assets()
        except data.AssetMissingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
