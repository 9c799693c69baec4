"""``python -m compozy_operator.testenv.node``: run one process node in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from ...kube import Kube
from .kubelet import DEFAULT_ENTRYPOINT, DEFAULT_IMAGES, NodeConfig, ProcessNode


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="process-node", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--name", required=True, help="Node name to register")
    p.add_argument("--workdir", required=True, type=Path, help="where pod directories and logs go")
    p.add_argument("--image", action="append", dest="images",
                   help=f"image repository this node runs (repeatable; default: {', '.join(DEFAULT_IMAGES)})")
    p.add_argument("--entrypoint", default=json.dumps(list(DEFAULT_ENTRYPOINT)),
                   help="JSON list: the image's entrypoint, used when a container has no command")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = NodeConfig(name=args.name, workdir=args.workdir, images=tuple(args.images or DEFAULT_IMAGES),
                     entrypoint=tuple(json.loads(args.entrypoint)))
    node = ProcessNode(Kube.from_kubeconfig(args.kubeconfig), cfg)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: node.stop())
    node.run()


if __name__ == "__main__":
    main()
