"""The config sections, one pydantic model each, shared by the RL and SFT schemas.

Every field carries a description: it is the documentation of the option. Fields holding file
paths are made with `path_field`, which the loader uses to resolve `./` and `../` paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from vlrl.data.images import DEFAULT_MAX_PIXELS

PATH_RULE = (
    " A path starting with ./ or ../ is relative to the folder of the YAML file that sets it (to the"
    " working directory for a command-line override); any other relative path is kept as given."
)


def path_field(default: Any = ..., *, description: str) -> Any:
    """A field holding file paths (a string, or a list or dict of strings), marked for the loader."""
    return Field(default, description=description + PATH_RULE, json_schema_extra={"path": True})


def is_path_field(field: FieldInfo) -> bool:
    """Whether a field was made by `path_field`."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("path") is True


def field_error(section: str, field: str, message: str, value: Any) -> ValidationError:
    """An error for a model validator to raise so that its location names the field, not the section.

    A plain ValueError from a model validator would be reported at the section (`reward`) when the
    user needs to know which key to fix (`reward.weights`).
    """
    error = PydanticCustomError("config", message)
    return ValidationError.from_exception_data(
        section, [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


def _as_list(value: Any) -> Any:
    """Let a single string stand for a one-item list (`train: a.jsonl`)."""
    return [value] if isinstance(value, str) else value


def _is_numeric(annotation: Any) -> bool:
    """Whether a field's type holds numbers anywhere (`float`, `int | None`, `list[float]`, ...)."""
    return annotation in (int, float) or any(_is_numeric(arg) for arg in get_args(annotation))


def _holds_bool(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_bool(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_bool(item) for item in value)
    return isinstance(value, bool)


class Section(BaseModel):
    """Base of every section and schema: unknown keys are errors, and assignments are validated too.

    Numbers are finite and never booleans: pydantic would otherwise read `train.lr=true` as 1.0
    and accept `.inf` or `nan` where a positive learning rate is due, and train on nonsense.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _is_numeric(field.annotation) and _holds_bool(value):
            raise PydanticCustomError("bool_number", "must be a number, not true or false")
        return value


GROUPS_RULE = (
    " Module groups are the family's: vision, connector and language for every family, plus router and"
    " experts for Mixture-of-Experts families (the run prints the model's groups and their parameter"
    " counts at start); a group the model does not have is an error when it loads."
)


class LoraSection(Section):
    """LoRA adapters (Hu et al., arXiv 2106.09685) as an alternative to full fine-tuning."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of the full weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        ["language"],
        min_length=1,
        description="Module groups that get adapters (one name or a list; `all`: every group): their"
        " linear layers, and for experts the fused expert weights (peft's target_parameters)." + GROUPS_RULE,
    )


ExpertsKernel = Literal["grouped_mm", "batched_mm", "eager"]


class ModelSection(Section):
    """The model to train, which of its module groups train, and at which learning rate."""

    path: str = path_field(description="Checkpoint folder (Hugging Face layout) to start training from.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the weights; bfloat16 on GPUs that support it, float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    freeze: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        [], description="Module groups to keep fixed, e.g. [vision, router]." + GROUPS_RULE
    )
    group_lr: dict[str, Annotated[float, Field(gt=0)]] = Field(
        {},
        description="Learning rate per module group, e.g. {vision: 1.0e-6}; groups not named train at"
        " train.lr." + GROUPS_RULE,
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30% slower."
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters.")
    experts_implementation: ExpertsKernel | None = Field(
        None,
        description="Kernel of Mixture-of-Experts layers (transformers' experts_implementation): grouped_mm"
        " (one grouped matmul over all experts), batched_mm, or eager (a loop over the experts); None:"
        " transformers' default. Ignored by dense models.",
    )
    router_aux_loss_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the router load-balancing loss (Switch Transformer, arXiv 2101.03961) added"
        " to the policy loss of Mixture-of-Experts models. 0 by default during RL: NeMo-RL measured that"
        " transformers' default coefficient degrades RL accuracy (the balancing gradient competes with the"
        " policy gradient on every token); with 0 the routers' logits are not even collected.",
    )
    router_dtype: Literal["float32", "model"] = Field(
        "float32",
        description="Precision of Mixture-of-Experts routers (ignored by dense models). float32: the router"
        " weights are kept in float32 and the logits computed in float32 (inputs cast up, autocast off"
        " inside the router), whatever model.dtype and train.autocast, as GLM-4.5V's transformers class"
        " already does and Megatron's moe_router_dtype; in bfloat16 the top-k choice of near-tied experts"
        " flips with rounding, between rollout and update and from one step to the next, and small"
        " router updates vanish in bfloat16 weights. model: the router runs in model.dtype like every"
        " other layer (transformers' default for Qwen3-MoE and Aria).",
    )
    # YAML 1.1 reads a bare `off` as false: `routing_replay: off` means the setting, not a type error.
    routing_replay: Annotated[
        Literal["off", "R2", "R3"], BeforeValidator(lambda v: "off" if v is False else v)
    ] = Field(
        "off",
        description="Routing replay for Mixture-of-Experts RL (vlrl.models.routing): the training forwards of"
        " a step use given experts per token and MoE layer instead of the routers' own choice. R3 (Rollout"
        " Routing Replay, arXiv 2510.11370): the experts the rollout used (the hf backend records them);"
        " R2: those of a no-grad training forward at the start of the update. The combine weights still"
        " come from the live router logits, so the router trains. The reference model routes by itself."
        " Needs gradient_checkpointing false (a recomputed layer would route again).",
    )

    @model_validator(mode="after")
    def _replay_without_recompute(self) -> ModelSection:
        if self.routing_replay != "off" and self.gradient_checkpointing:
            message = (
                "needs model.gradient_checkpointing=false: the backward's recomputed layers would route anew"
            )
            raise field_error("model", "routing_replay", message, self.routing_replay)
        return self

    @model_validator(mode="after")
    def _groups_consistent(self) -> ModelSection:
        both = [g for g in self.group_lr if g in self.freeze]
        if both:
            message = f"sets a learning rate for {', '.join(both)}, which model.freeze keeps fixed"
            raise field_error("model", "group_lr", message, self.group_lr)
        if "all" in self.lora.target and len(self.lora.target) > 1:
            raise field_error(
                "model", "lora.target", "'all' cannot be combined with other groups", self.lora.target
            )
        return self


class DataSection(Section):
    """Data files and how their rows become prompts."""

    train: Annotated[list[str], BeforeValidator(_as_list)] = path_field(
        description="Training data file(s): one path or a list (.jsonl, .json or .parquet)."
    )
    eval: dict[str, str] = path_field(
        {}, description="Held-out sets to evaluate on: name -> data file. Metrics are logged per name."
    )
    format: Literal["auto", "canonical", "maye", "vlm_r1", "r1v", "scienceqa"] = Field(
        "auto", description="Layout of the data rows; auto detects it from the first row."
    )
    image_root: str | None = path_field(
        None,
        description="Folder that relative image paths in the data rows are relative to (VLM-R1 and"
        " LLaVA keep images apart from the annotation files); None: the folder of each data file.",
    )
    max_image_pixels: int | None = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest image file accepted, in pixels (width x height, read from the header before"
        " decoding), so that a small file declaring a huge image cannot take gigabytes of memory. The"
        " default, 64 megapixels, is twice an 8K frame (HR-Bench 8K's 7680x4320), 192 MB decoded; None:"
        " no limit of ours (PIL still refuses files over 2 x PIL.Image.MAX_IMAGE_PIXELS, 179 MP).",
    )
    skip_invalid: bool = Field(
        False, description="Drop unusable rows with a warning instead of stopping on the first one."
    )
    max_prompt_length: int = Field(
        1024,
        ge=1,
        description="Longest prompt in tokens (image tokens included); longer prompts are dropped.",
    )
    template: str = Field(
        "think_answer", description="Name of the prompt template that asks for the reasoning/answer format."
    )
    system_prompt: str | None = Field(None, description="System message; None uses the template's own.")
    image_min_pixels: int | None = Field(
        None, ge=1, description="Smallest image area after resizing; None keeps the processor default."
    )
    image_max_pixels: int | None = Field(
        None, ge=1, description="Largest image area after resizing; None keeps the processor default."
    )
    shuffle: bool = Field(True, description="Shuffle the training data each epoch.")
    seed: int = Field(0, description="Seed of the data shuffle.")

    @model_validator(mode="after")
    def _pixel_bounds_ordered(self) -> DataSection:
        low, high = self.image_min_pixels, self.image_max_pixels
        if low is not None and high is not None and low > high:
            raise field_error("data", "image_min_pixels", f"is above data.image_max_pixels ({high})", low)
        return self


class VllmSection(Section):
    """The vLLM engine that `rollout.backend: vllm` runs in each training process."""

    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of GPU memory vLLM may take; the rest is left for training."
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Longest prompt + completion vLLM reserves KV cache for; None: the model's limit.",
    )
    sleep: bool = Field(
        True, description="Let the colocated vLLM engine sleep during the policy update (GPU only)."
    )


class ServerSection(Section):
    """The separately launched vLLM or SGLang server that `rollout.backend: server` samples from."""

    url: str | None = Field(None, description="Address of the generation server; needed by backend server.")
    kind: Literal["vllm", "sglang"] = Field(
        "vllm", description="What runs at rollout.server.url: a `vllm serve` or an SGLang server."
    )
    sync_dir: str | None = Field(
        None,
        description="Folder on disk the trainer and the server share; the trainer writes each update's"
        " weights there and the server reloads them. None: the server keeps its weights.",
    )
    timeout_s: float = Field(600.0, gt=0, description="Time limit of one request to the server.")
    retries: int = Field(3, ge=0, description="Retries of a failed server request, with backoff.")


class RolloutSection(Section):
    """Sampling G completions per prompt."""

    backend: Literal["hf", "vllm", "server"] = Field(
        "hf",
        description="Generation engine: hf (the training model, in vlrl's own decoding loop that prefills each "
        "prompt once for its whole group), vllm (in process), server (HTTP).",
    )
    vllm: VllmSection = Field(
        default_factory=VllmSection, description="The colocated vLLM engine (backend vllm)."
    )
    server: ServerSection = Field(
        default_factory=ServerSection, description="The generation server (backend server)."
    )
    group_size: int = Field(8, ge=1, description="Completions sampled per prompt (G in GRPO).")
    prompts_per_step: int = Field(
        8, ge=1, description="Prompts per optimizer step; the batch is this times G."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables it.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens; 0 disables it.")
    max_new_tokens: int = Field(128, ge=1, description="Longest completion in tokens.")
    dynamic_sampling: bool = Field(
        False,
        description="Drop groups whose rewards are all equal and sample more prompts (DAPO, arXiv 2503.14476).",
    )
    max_resample_rounds: int = Field(
        3,
        ge=0,
        le=15,
        description="With dynamic_sampling: extra sampling rounds before training on a short batch. At"
        " most 15: a step's rounds draw with seeds (train.seed * 1_000_003 + step) * 16 + round, so a"
        " 16th round would repeat the next step's samples.",
    )

    @model_validator(mode="after")
    def _server_needs_url(self) -> RolloutSection:
        if self.backend == "server" and not self.server.url:
            raise field_error("rollout", "server.url", "is required when rollout.backend is server", None)
        return self


class RewardSection(Section):
    """Scoring completions: a weighted sum of reward functions."""

    functions: list[str] = path_field(
        ["format", "accuracy"],
        description="Rewards to sum: names from the rewards table, or 'file.py:function' for your own.",
    )
    weights: list[float] | None = Field(
        None, description="Weight of each reward, in the order of functions; None weighs each by 1."
    )
    fallback: float = Field(0.0, description="Score given when a reward raises, times out or returns None.")
    timeout_s: float = Field(5.0, gt=0, description="Time limit of one reward call in seconds.")
    overlong_buffer: int = Field(
        0,
        ge=0,
        description="Soft overlong penalty: completions within this many tokens of max_new_tokens lose"
        " reward linearly (DAPO, arXiv 2503.14476); 0 disables it.",
    )
    repetition_ngram: int = Field(3, ge=1, description="n-gram size of the repetition reward.")

    @model_validator(mode="after")
    def _one_weight_per_function(self) -> RewardSection:
        if self.weights is not None and len(self.weights) != len(self.functions):
            message = f"has {len(self.weights)} entries but reward.functions has {len(self.functions)}"
            raise field_error("reward", "weights", message, self.weights)
        return self


# Names of the tables in vlrl.algos. config sits below algos and cannot import them, so they are
# spelled here; tests/algos/test_algos_registry.py fails when the two drift apart.
AdvantageName = Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
PolicyLossName = Literal["ppo_clip", "gspo", "reinforce", "cispo", "sapo"]
LossAggName = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
KLEstimatorName = Literal["k1", "k2", "k3"]
MismatchCorrectionName = Literal["none", "tis_token", "tis_seq", "mis_token", "mis_seq"]

# Estimators that compare a response with the others of its group (group mean or std): with one
# response per prompt every advantage is 0 and the run silently learns nothing.
GROUP_RELATIVE_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


class AlgoSection(Section):
    """The RL objective: advantage estimator, policy loss, KL and entropy terms."""

    advantage: AdvantageName = Field(
        "grpo", description="Advantage estimator, by name in the advantages table (vlrl.algos.ADVANTAGES)."
    )
    policy_loss: PolicyLossName = Field(
        "ppo_clip", description="Policy loss, by name in the losses table (vlrl.algos.POLICY_LOSSES)."
    )
    loss_agg: LossAggName = Field(
        "token_mean",
        description="How per-token losses become one number: token_mean over the batch (DAPO),"
        " seq_mean_token_mean (GRPO paper; required by gspo), seq_mean_token_sum_norm (Dr.GRPO,"
        " arXiv 2503.20783).",
    )
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio may fall to 1 - clip_low.")
    clip_high: float = Field(0.2, ge=0, description="PPO ratio may rise to 1 + clip_high (DAPO uses 0.28).")
    dual_clip: float | None = Field(
        3.0,
        gt=1,
        description="Dual-clip constant c (Ye et al. 2020, arXiv 1912.09729): with a negative advantage A"
        " the loss is capped at -c * A, so a ratio far above 1 (possible from the second ppo_epoch on)"
        " cannot give an unbounded update; 3.0 as verl's clip_ratio_c. None disables it.",
    )
    kl_beta: float = Field(
        0.0, ge=0, description="Weight of the KL penalty to the reference model; 0 loads none."
    )
    kl_estimator: KLEstimatorName = Field(
        "k3", description="KL estimator of Schulman's 'Approximating KL divergence'; k3 as in GRPO."
    )
    kl_in_reward: bool = Field(
        False, description="Subtract the KL from the reward (PPO-style) instead of adding it to the loss."
    )
    ppo_epochs: int = Field(
        1, ge=1, description="Updates per rollout batch (mu in the GRPO paper); 1 with policy_loss reinforce."
    )
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus; 0 disables it.")
    cispo_clip_low: float | None = Field(
        None,
        ge=0,
        le=1,
        description="policy_loss cispo (MiniMax-M1, arXiv 2506.13585): its stop-gradient IS weight is at"
        " least 1 - cispo_clip_low; None sets no lower bound, as the paper does.",
    )
    cispo_clip_high: float = Field(
        3.0,
        ge=0,
        description="policy_loss cispo: the IS weight is at most 1 + cispo_clip_high (the paper's"
        " eps_high^IS, the one it tunes; 3.0 caps it at 4 as Tinker's CISPO). Separate from clip_low /"
        " clip_high: those bound PPO's trust region, this truncates a weight that keeps its token's gradient.",
    )
    sapo_tau_pos: float = Field(
        1.0,
        gt=0,
        description="policy_loss sapo (arXiv 2511.20347): temperature of the soft gate"
        " (4/tau) sigmoid(tau (ratio - 1)) for positive advantages; the paper's 1.0.",
    )
    sapo_tau_neg: float = Field(
        1.05,
        gt=0,
        description="policy_loss sapo: gate temperature for negative advantages; the paper's 1.05"
        " (above sapo_tau_pos, so negative updates fade faster as the ratio leaves 1).",
    )
    rollout_correction: MismatchCorrectionName = Field(
        "none",
        description="Correct the rollout/training mismatch with the sampler's log-probs"
        " (vlrl.algos.MISMATCH_CORRECTIONS): truncated (tis) or masked (mis) importance sampling, per"
        " token or per sequence. none with rollout.backend hf (its sampler is the training model);"
        " tis_token recommended with vllm or server. The mismatch/* metrics are logged in every case.",
    )
    rollout_is_threshold: float = Field(
        2.0,
        gt=1,
        description="Upper threshold C of rollout_correction: tis truncates the weight"
        " pi_train / pi_sampler at C, mis drops tokens (sequences) whose weight is above C.",
    )
    rollout_is_threshold_lower: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="mis drops tokens (sequences) whose weight is below this; None: 1 / rollout_is_threshold.",
    )

    @model_validator(mode="after")
    def _gspo_averages_sequences(self) -> AlgoSection:
        # GSPO's token-level form has the paper's gradient only when each sequence counts once.
        if self.policy_loss == "gspo" and self.loss_agg != "seq_mean_token_mean":
            message = "must be seq_mean_token_mean with algo.policy_loss gspo (its gradient assumes it)"
            raise field_error("algo", "loss_agg", message, self.loss_agg)
        return self

    @model_validator(mode="after")
    def _reinforce_is_on_policy(self) -> AlgoSection:
        if self.policy_loss == "reinforce" and self.ppo_epochs > 1:
            message = (
                "must be 1 with algo.policy_loss reinforce: it has no ratio or clip to correct"
                " the epochs after the first, which update a policy that no longer sampled the batch"
            )
            raise field_error("algo", "ppo_epochs", message, self.ppo_epochs)
        return self


# The devices the training code is written for (process groups, autocast and offload know these).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class TrainSection(Section):
    """Optimizer, schedule, batching, checkpoints and evaluation cadence."""

    steps: int = Field(100, ge=1, description="Optimizer steps.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps from 0 to lr.")
    lr_schedule: Literal["cosine", "constant", "linear"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    max_grad_norm: float = Field(
        1.0, ge=0, description="Clip the gradient norm to this; 0 disables clipping."
    )
    max_nonfinite_skips: int = Field(
        3,
        ge=1,
        description="A step with a NaN or infinite gradient norm is skipped (no update); this many in a "
        "row stop the run with an error.",
    )
    micro_batch_tokens: int = Field(
        4096, ge=1, description="Token budget of one forward/backward; gradients accumulate over the step."
    )
    device: str = Field(
        "auto", description="Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N."
    )
    autocast: Literal["bfloat16", "float16"] | None = Field(
        None,
        description=(
            "Mixed precision: run forward passes in this dtype while keeping model.dtype (use float32) "
            "master weights, so small updates are not rounded away as in pure bfloat16 training."
        ),
    )
    seed: int = Field(0, description="Seed of torch, sampling and initialisation.")
    output_dir: str = path_field(
        "runs/vlrl", description="Folder for checkpoints, logs and the resolved config."
    )
    save_every: int = Field(
        0, ge=0, description="Save a checkpoint every this many steps; 0 saves only at the end."
    )
    keep_last_checkpoints: int | None = Field(
        None,
        ge=1,
        description="Keep only this many most recent checkpoints (as TRL's save_total_limit), deleting "
        "older ones after each save; the checkpoint the run resumed from is kept too. None keeps all.",
    )
    resume: str | None = path_field(
        None, description="Resume from a checkpoint folder, or 'auto' for the latest in output_dir."
    )
    eval_every: int = Field(0, ge=0, description="Evaluate on data.eval every this many steps; 0 never.")
    eval_benchmark: str = Field(
        "math_verify",
        description="Scoring convention of in-training evaluation (vlrl.evaluation.BENCHMARKS) for text "
        "answers; math_verify is the accuracy reward's own extractor. Sets whose answers are boxes are "
        "scored by rec (Acc@IoU0.5), or detection for labelled objects, unless this names one of them.",
    )
    eval_samples: int = Field(
        1,
        ge=1,
        description="Completions per held-out question for pass@k (sampled at temperature 1); 1 = greedy only.",
    )
    eval_pass_k: list[int] = Field([1], description="k values of the pass@k logged when eval_samples > 1.")
    eval_batch_size: int = Field(128, ge=1, description="Rows generated at once during evaluation.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise PydanticCustomError("device", "must be auto, cpu, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _pass_k_within_samples(self) -> TrainSection:
        bad = [k for k in self.eval_pass_k if not 1 <= k <= self.eval_samples]
        if self.eval_samples > 1 and bad:
            message = f"k values {bad} must lie in 1..train.eval_samples ({self.eval_samples})"
            raise field_error("train", "eval_pass_k", message, self.eval_pass_k)
        return self

    log_every: int = Field(1, ge=1, description="Log metrics every this many steps.")


class DistributedSection(Section):
    """Data parallelism under torchrun (FSDP2); ignored by a run started without torchrun."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend: auto picks nccl on CUDA devices, gloo on CPU."
    )
    timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Collectives waiting longer than this fail, so a dead or hung rank stops the job "
        "instead of hanging it. Keep it above the longest evaluation (other ranks wait for rank 0's).",
    )
    param_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None, description="FSDP2 compute dtype of the gathered weights; None keeps model.dtype."
    )
    reduce_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="FSDP2 dtype of the gradient reduction across ranks."
    )
    cpu_offload: bool = Field(False, description="Keep parameter shards and optimizer state on the CPU.")


class LoggingSection(Section):
    """Where metrics go."""

    jsonl: bool = Field(True, description="Write metrics to output_dir/metrics.jsonl.")
    tensorboard: bool = Field(False, description="Write TensorBoard events (needs the tensorboard extra).")
    wandb: bool = Field(
        False,
        description="Log to Weights & Biases (needs the wandb extra). A run resumed with train.resume"
        " continues the same wandb run: its id is kept in output_dir/wandb_run_id.txt.",
    )
    wandb_project: str = Field("vlrl", description="Weights & Biases project name.")
    wandb_entity: str | None = Field(
        None, description="Team or user the wandb run belongs to; None: your default entity."
    )
    wandb_name: str | None = Field(
        None, description="Display name of the wandb run; None: the name of the train.output_dir folder."
    )
    wandb_group: str | None = Field(
        None, description="wandb group to show the run in (e.g. the seeds of one experiment); None: none."
    )
    wandb_tags: list[str] = Field([], description="Tags of the wandb run.")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None,
        description="online: sync while running; offline: write under output_dir/wandb for a later"
        " `wandb sync`; disabled: log nothing; None: wandb's own default (the WANDB_MODE environment"
        " variable, else online).",
    )
    progress: bool = Field(True, description="Show a progress bar on the terminal.")
    rollouts_every: int = Field(
        1,
        ge=0,
        description="Dump sampled rollouts to output_dir/rollouts.jsonl every this many steps; 0 never.",
    )
    rollouts_per_step: int = Field(
        2, ge=1, description="Prompt groups (with all G completions) dumped per step."
    )


# Words whose use MAYE (arXiv 2504.02587) tracks as reflective behaviour during RL.
REFLECTION_WORDS = [
    "wait",
    "re-check",
    "recheck",
    "however",
    "alternatively",
    "verify",
    "double-check",
    "mistake",
    "but wait",
    "let me check",
]


class MonitorSection(Section):
    """Training-dynamics metrics (MAYE, arXiv 2504.02587) and alarms that flag an unhealthy run.

    Rules look at the last `window` logged steps; "early" and "late" levels are the means of the
    first and last third of that window.
    """

    enabled: bool = Field(True, description="Check the alarm rules at every logged step.")
    reflection_words: list[str] = Field(
        REFLECTION_WORDS,
        description="Words and phrases counted as reflection (case-insensitive, whole words), as in MAYE.",
    )
    window: int = Field(20, ge=3, description="Logged steps of history the alarm rules look at.")
    min_steps: int = Field(
        6, ge=2, description="Steps of history (with the rule's metric) needed before a rule may fire."
    )
    format_rise: float = Field(
        0.3,
        gt=0,
        description="format_without_accuracy: least rise of the format reward (late minus early) that counts.",
    )
    format_acc_min_rise: float = Field(
        0.05,
        description="format_without_accuracy: fires when accuracy rose by less than this meanwhile (or is not logged).",
    )
    empty_answers_max: float = Field(
        0.3, ge=0, le=1, description="empty_answers: share of empty or degenerate answers above this."
    )
    length_collapse_ratio: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="length_collapse: late mean response length below this times the early one.",
    )
    length_blowup_ratio: float = Field(
        2.0, gt=1, description="length_blowup: late mean response length above this times the early one."
    )
    repetition_max: float = Field(
        0.5,
        ge=0,
        le=1,
        description="repetition: share of repeated word n-grams (minus the repetition reward) above this.",
    )
    zero_std_max: float = Field(
        0.5,
        ge=0,
        le=1,
        description="zero_std_groups_rising: late share of groups whose rewards are all equal above this.",
    )
    zero_std_min_rise: float = Field(
        0.1,
        ge=0,
        description="zero_std_groups_rising: and risen by more than this since early in the window.",
    )
    kl_spike_factor: float = Field(
        5.0,
        gt=1,
        description="kl_spike: the step's KL above this times the median of the steps before it in the window.",
    )
    kl_spike_floor: float = Field(0.1, ge=0, description="kl_spike: and the KL is above this value.")
    skipped_steps_max: float = Field(
        0.25,
        ge=0,
        le=1,
        description="skipped_steps: share of recent steps that made no update for lack of signal "
        "(dynamic sampling kept no group) above this.",
    )
    no_signal_steps: int = Field(
        10,
        ge=1,
        description="no_learning_signal: fires after this many steps in a row in which every group's "
        "rewards were equal (all advantages zero; e.g. every reward 0). At most monitor.window.",
    )
    clip_spike_factor: float = Field(
        3.0,
        gt=1,
        description="clip_spike: the step's clip fraction above this times the median of the steps before it.",
    )
    clip_spike_floor: float = Field(
        0.2, ge=0, le=1, description="clip_spike: and the clip fraction is above this value."
    )
    expert_load_max: float = Field(
        4.0,
        gt=1,
        description="expert_collapse (Mixture-of-Experts models): fires when moe/load_max_over_mean, the"
        " busiest expert's tokens over the mean per expert in the worst layer, is above this in every"
        " one of the last monitor.min_steps steps. A balanced router sits near 1 to 2 (top-k routing"
        " of a few thousand tokens); above 4 one expert does the work of four. The ceiling is E/k (each"
        " token goes to k different experts): 16 for Qwen3-VL-30B-A3B and GLM-4.5V (128 experts, top-8),"
        " 2 for the tiny test models (4 experts, top-2).",
    )
    mismatch_kl_max: float = Field(
        0.01,
        gt=0,
        description="rollout_mismatch: fires when mismatch/kl, the estimated KL(sampler || trainer) per"
        " response token, is above this in every one of the last monitor.min_steps steps. The hf backend"
        " measures ~1e-7 (it is the trained model); a bfloat16 engine typically 1e-4 to 1e-3; above"
        " 0.01 the samples come from a noticeably different policy.",
    )
    dead_expert_steps: int = Field(
        20,
        ge=1,
        description="moe/dead_experts counts the (layer, expert) pairs that received no token in this"
        " many steps in a row; the dead_experts alarm fires when the count rises above 0.",
    )

    @model_validator(mode="after")
    def _min_steps_fit_the_window(self) -> MonitorSection:
        if self.min_steps > self.window:
            raise field_error(
                "monitor", "min_steps", f"is above monitor.window ({self.window})", self.min_steps
            )
        if self.no_signal_steps > self.window:
            raise field_error(
                "monitor",
                "no_signal_steps",
                f"is above monitor.window ({self.window})",
                self.no_signal_steps,
            )
        return self


class SFTSection(Section):
    """Supervised fine-tuning specifics."""

    epochs: int | None = Field(
        None,
        ge=1,
        description="None: the run lasts train.steps steps, passing over data.train as often as that"
        " takes. A number: the run ends after that many passes over data.train, or at train.steps if"
        " that comes first; the run prints its number of steps and which of the two set it.",
    )
    batch_size: int = Field(8, ge=1, description="Samples per optimizer step.")
    target_field: str = Field(
        "solution", description="Sample field the model learns to produce (the reasoning and answer)."
    )
    eval_max_new_tokens: int = Field(
        128, ge=1, description="Response limit of the greedy answers scored by in-training evaluation."
    )
    stop_at_acc: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Stop at the first evaluation (every train.eval_every steps) whose greedy accuracy"
        " reaches this on every data.eval set, and save that step: a cold start for RL that is right"
        " only part of the time. None: run all train.steps.",
    )
    stop_from_step: int = Field(
        0,
        ge=0,
        description="sft.stop_at_acc is checked from this step on: a model early in training can answer"
        " right by chance greedily while its samples (what RL learns from) are still malformed.",
    )
