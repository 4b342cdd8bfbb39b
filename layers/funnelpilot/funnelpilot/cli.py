"""``funnelpilot`` command line: demo, serve (local runtime)."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funnelpilot", description="funnelpilot local tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole machine on the local runtime and report")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--contacts", type=int, default=8)
    serve = sub.add_parser("serve", help="serve the HTTP API and a landing page on 127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    bulk = sub.add_parser("bulk", help="start (or resume) a bulk action over a segment (Step Functions)")
    machine = bulk.add_mutually_exclusive_group(required=True)
    machine.add_argument("--stack", help="deployed stack name (reads its BulkStateMachineArn output)")
    machine.add_argument("--state-machine-arn")
    bulk.add_argument("--segment", required=True)
    action = bulk.add_mutually_exclusive_group(required=True)
    action.add_argument("--tag")
    action.add_argument("--untag")
    action.add_argument("--set", nargs="+", metavar="NAME=VALUE", help="set properties")
    action.add_argument("--funnel", help="hand each member to this funnel (funnel.handoff)")
    bulk.add_argument("--run-id", help="resume this run: members already done are skipped")
    bulk.add_argument("--wait", action="store_true", help="wait and print the report")
    args = parser.parse_args(argv)
    if args.command == "bulk":
        from funnelpilot import bulk as bulk_mod

        return bulk_mod.cli(args)
    if args.command == "demo":
        from funnelpilot.local import demo as demo_mod

        return demo_mod.run(seed=args.seed, contacts=args.contacts)
    if args.command == "serve":
        from funnelpilot.local.server import serve as serve_fn

        serve_fn(port=args.port)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
