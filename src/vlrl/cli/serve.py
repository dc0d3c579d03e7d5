"""`vlrl serve MODEL_DIR [--host H] [--port P] [--max-batch N] [--served-model-name NAME]`.

Serves a checkpoint with an OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`), e.g.
as the VLM or the reasoner of `vlrl coldstart`, or to try a trained policy with any OpenAI client.
"""

from __future__ import annotations

import argparse
import logging

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


def run(args: argparse.Namespace) -> int:
    import torch

    from vlrl.serving import make_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    server = make_server(
        args.model_dir, args.host, args.port, args.max_batch, args.served_model_name, args.dtype, device
    )
    host, port = server.server_address[:2]
    print(f"serving '{server.engine.name}' at http://{host}:{port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
