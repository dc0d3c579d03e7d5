"""An OpenAI-compatible chat server over the HF rollout backend (`vlrl serve`).

    server = make_server(model_dir, "127.0.0.1", 8000)
    server.serve_forever()

`ChatEngine` answers parsed requests without HTTP; messages become model inputs through
`ModelAdapter.encode_messages`, the same path data samples take.
"""

from vlrl.serving.engine import ChatEngine, load_engine
from vlrl.serving.errors import RequestError
from vlrl.serving.protocol import ChatRequest, parse_chat_request
from vlrl.serving.server import ChatServer, make_server

__all__ = [
    "ChatEngine",
    "ChatRequest",
    "ChatServer",
    "RequestError",
    "load_engine",
    "make_server",
    "parse_chat_request",
]
