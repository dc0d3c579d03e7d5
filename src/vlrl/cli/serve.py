"""`vlrl serve MODEL_DIR [--host H] [--port P] [--max-batch N] [--image-root DIR ...]`.

Serves a checkpoint with an OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`), e.g.
as the VLM or the reasoner of `vlrl coldstart`, or to try a trained policy with any OpenAI client.
Images come as base64 data URLs, or as paths of files under an `--image-root`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.models.loading import DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="checkpoint folder (Hugging Face format)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: local connections only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one")
    p.add_argument(
        "--max-batch", type=int, default=8, help="most completions decoded at once (caps a request's n)"
    )
    p.add_argument("--served-model-name", help="model id clients send (default: the folder's name)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--image-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose files image parts may name by path (repeatable; none: data URLs only)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels, read from the header before decoding (default "
        f"{DEFAULT_MAX_PIXELS}; 0: no limit)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from vlrl.serving import make_server
    from vlrl.serving.server import is_loopback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    server = make_server(
        args.model_dir,
        args.host,
        args.port,
        args.max_batch,
        args.served_model_name,
        args.dtype,
        device,
        args.image_root,
        args.max_image_pixels or None,
    )
    host, port = server.server_address[:2]
    if not is_loopback(host):
        print(
            f"vlrl serve: warning: listening on {host}, reachable from other machines; the API has "
            "no authentication",
            file=sys.stderr,
            flush=True,
        )
    print(f"serving '{server.engine.name}' at http://{host}:{port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
