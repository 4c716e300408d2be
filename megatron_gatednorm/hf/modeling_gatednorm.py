"""Decoder-only LM with GatedNorm / PreAffine / DyT norms, exported by ``mgn convert to-hf``.

Self-contained (imports only torch and transformers) so that ``mgn convert`` can copy it next
to the weights and ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
loads it without ``megatron_gatednorm`` or Megatron. It reproduces a Megatron-core
``GPTModel`` built with megatron-gatednorm's specs. Identical to transformers' Qwen3 /
Qwen3-MoE except:

* every norm is :class:`GatedNormRMSNorm`, whose math is megatron-gatednorm's
  ``ops/reference.py`` written out again: statistics and the gate in float32,
  ``y = γ ⊙ x / sqrt(mean(x²) + eps)`` (PreAffine: of ``λ1 ⊙ x``; DyT: ``γ ⊙ tanh(αx) + β``),
  gated output ``y ⊙ act(gate_up · silu(gate_down · y))``, ``γ = 1 + weight`` when
  ``zero_centered_gamma``; slots outside ``norm_placement`` are plain RMSNorm;
* optional attention output gate (Megatron's ``attention_output_gate``): ``q_proj`` holds per
  head ``[q_h; g_h]`` (Qwen3-Next's layout) and the attention output is multiplied by
  ``sigmoid(g)`` in float32 before ``o_proj``;
* optional QK-norm; partial RoPE (``rotary_percent``) with Megatron's non-interleaved rotation;
* MoE routing as Megatron's defaults (softmax over the top-k logits == softmax then top-k then
  renormalise; ``norm_topk_prob=False`` is Megatron's ``moe_router_pre_softmax``), plus an
  optional shared expert with a sigmoid gate (Megatron's ``moe_shared_expert_gate``);
* optional residual clamp after every residual add (``residual_clip``);
* hybrid models (``layer_types``): Gated DeltaNet layers with Qwen3-Next's parameter names and
  layout, computing Megatron's ``GatedDeltaNet`` (causal depthwise conv + SiLU, L2-normalised
  q/k, gated delta rule, output RMSNorm gated by ``silu(z)``; the output norm honours
  ``zero_centered_gamma`` like every other norm). The delta rule runs in float32 chunks with a
  triangular solve (:func:`gated_delta_rule`); its conv and recurrent states live in
  transformers' cache (``layer_types`` makes ``DynamicCache`` allocate linear-attention layers).

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with an explicit boolean
mask; the KV cache is transformers' ``Cache`` (``generate()`` works).
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # transformers >= 5 guards re-initialisation of loaded weights in these helpers
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    from torch.nn import init

from .configuration_gatednorm import GATED_VARIANTS, GatedNormConfig

_GATE_ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "identity": lambda t: t,
}
# transformers renamed the cache argument/output ``past_key_values`` -> ``cache`` in 5.x
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GatedNormRMSNorm(nn.Module):
    """One norm slot: RMSNorm, PreAffine RMSNorm or DyT, optionally followed by the low-rank gate."""

    def __init__(self, hidden_size: int, variant: str, config: GatedNormConfig):
        super().__init__()
        self.variant = variant
        self.eps = config.rms_norm_eps
        self.zero_centered_gamma = config.zero_centered_gamma
        self.dyt = variant in ("dyt", "gatedyt")
        self.pre_affine = variant in ("preaffine", "preaffine_gatednorm")
        self.gated = variant in GATED_VARIANTS
        self.gate_activation = config.gate_activation
        self.weight = nn.Parameter(torch.full((hidden_size,), 0.0 if self.zero_centered_gamma else 1.0))
        if self.pre_affine:
            self.pre_scale = nn.Parameter(torch.ones(hidden_size))
        if self.dyt:
            self.alpha = nn.Parameter(torch.full((1,), 0.5))
            self.bias = nn.Parameter(torch.zeros(hidden_size))
        if self.gated:
            out = hidden_size if config.gate_granularity == "elementwise" else 1
            self.gate_down = nn.Parameter(torch.zeros(config.gatednorm_rank, hidden_size))
            self.gate_up = nn.Parameter(torch.zeros(out, config.gatednorm_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        h = x.to(dt)
        gamma = self.weight.to(dt) + 1 if self.zero_centered_gamma else self.weight.to(dt)
        if self.dyt:
            y = torch.tanh(self.alpha.to(dt) * h) * gamma + self.bias.to(dt)
        else:
            if self.pre_affine:
                h = h * self.pre_scale.to(dt)
            y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * gamma
        if self.gated:
            g = F.silu(y @ self.gate_down.to(dt).t()) @ self.gate_up.to(dt).t()
            y = y * _GATE_ACTIVATIONS[self.gate_activation](g)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, variant={self.variant}, eps={self.eps}"


class GatedNormRotaryEmbedding(nn.Module):
    """Megatron's RoPE: ``inv_freq = base^(-2i/rot_dim)`` on the first ``rot_dim`` channels."""

    def __init__(self, config: GatedNormConfig):
        super().__init__()
        self.rot_dim = int(config.head_dim * config.rotary_percent)
        self.base = float(config.rotary_base)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # computed here, not held in a buffer: from_pretrained leaves non-persistent buffers of
        # remote-code models uninitialised (meta-device construction)
        exponent = torch.arange(0, self.rot_dim, 2, dtype=torch.float32, device=position_ids.device) / self.rot_dim
        inv_freq = 1.0 / (self.base**exponent)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, s, rot_dim]
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    t_rot = t_rot * cos.to(t.dtype) + rotate_half(t_rot) * sin.to(t.dtype)
    return torch.cat((t_rot, t_pass), dim=-1)


class GatedNormAttention(nn.Module):
    def __init__(self, config: GatedNormConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.output_gate = config.attention_output_gate
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d * (2 if self.output_gate else 1), bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        if config.qk_norm:
            self.q_norm = GatedNormRMSNorm(d, config.slot_variant("qk"), config)
            self.k_norm = GatedNormRMSNorm(d, config.slot_variant("qk"), config)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask, cache: Optional[Cache], output_attentions: bool = False):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, -1)
        if self.output_gate:
            q, gate = q.chunk(2, dim=-1)
            gate = gate.reshape(b, s, -1)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        probs = None
        if output_attentions:  # explicit softmax so the probabilities can be returned
            scores = (q.float() @ k.float().transpose(-1, -2)) * self.head_dim**-0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out = (probs @ v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(b, s, -1)
        if self.output_gate:
            out = (out.float() * torch.sigmoid(gate.float())).to(out.dtype)
        return self.o_proj(out), probs


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def gated_delta_rule(q, k, v, g, beta, state=None, chunk_size: int = 64):
    """Gated delta rule over a sequence, in chunks (float32, float64 for float64 inputs).

    Per head, with ``α_t = exp(g_t)`` and ``q`` scaled by ``d_k^-1/2``::

        S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,    o_t = S_tᵀ q_t

    Inside a chunk with cumulative log-decay ``γ``, the updates ``u_j = β_j (v_j - k_jᵀ α S_{j-1})``
    solve the unit lower-triangular system ``(I + M) U = β ⊙ (V - e^γ ⊙ K S_0)`` with
    ``M_ji = β_j e^{γ_j-γ_i} k_j·k_i`` (i < j); then ``o_t = e^{γ_t} q_tᵀS_0 + Σ_{j≤t} e^{γ_t-γ_j}
    (q_t·k_j) u_j`` and ``S_C = e^{γ_C} S_0 + Σ_j e^{γ_C-γ_j} k_j u_jᵀ``.

    Args: ``q, k`` [b, s, h, d_k] (normalised), ``v`` [b, s, h, d_v], ``g, beta`` [b, s, h],
    ``state`` [b, h, d_k, d_v] or None. Returns ``(o [b, s, h, d_v] in v's dtype, final state)``.
    """
    out_dtype = v.dtype
    dt = torch.float64 if v.dtype == torch.float64 else torch.float32
    q, k, v = (t.transpose(1, 2).to(dt) for t in (q, k, v))
    g, beta = (t.transpose(1, 2).to(dt) for t in (g, beta))
    q = q * q.shape[-1] ** -0.5
    b, h, s, dk = k.shape
    S = q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state.to(dt)
    out = []
    for start in range(0, s, chunk_size):
        qc, kc, vc, bc = (t[:, :, start:start + chunk_size] for t in (q, k, v, beta))
        gamma = g[:, :, start:start + chunk_size].cumsum(-1)
        c = gamma.shape[-1]
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        m = (bc[..., None] * decay * (kc @ kc.transpose(-1, -2))).tril(-1)
        rhs = bc[..., None] * (vc - gamma.exp()[..., None] * (kc @ S))
        u = torch.linalg.solve_triangular(m, rhs, upper=False, unitriangular=True)
        out.append(gamma.exp()[..., None] * (qc @ S) + ((qc @ kc.transpose(-1, -2)) * decay) @ u)
        tail = (gamma[..., -1:] - gamma).exp()[..., None]
        S = gamma[..., -1, None, None].exp() * S + (kc * tail).transpose(-1, -2) @ u
    o = torch.cat(out, dim=2).transpose(1, 2)
    return o.to(out_dtype), S


class GatedNormGatedDeltaNet(nn.Module):
    """Megatron's ``GatedDeltaNet`` with Qwen3-Next's parameters: ``in_proj_qkvz`` (rows per key
    head g: ``[q_g | k_g | v_g· | z_g·]``), ``in_proj_ba`` (per g ``[β_g· | α_g·]``; ``·`` the
    ``nv/nk`` value heads of g), ``conv1d`` over ``[q | k | v]``, ``dt_bias``, ``A_log``, ``norm``,
    ``out_proj``. ``g = -exp(A_log) · softplus(α + dt_bias)``, ``β = sigmoid(β)``."""

    def __init__(self, config: GatedNormConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.nk, self.nv = config.linear_num_key_heads, config.linear_num_value_heads
        self.dk, self.dv = config.linear_key_head_dim, config.linear_value_head_dim
        self.kernel = config.linear_conv_kernel_dim
        h, r = config.hidden_size, self.nv // self.nk
        self.conv_dim = 2 * self.nk * self.dk + self.nv * self.dv
        self.in_proj_qkvz = nn.Linear(h, self.nk * (2 * self.dk + 2 * r * self.dv), bias=False)
        self.in_proj_ba = nn.Linear(h, 2 * self.nv, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.nv))
        self.A_log = nn.Parameter(torch.zeros(self.nv))
        self.norm = GatedNormRMSNorm(self.dv, "rmsnorm", config)
        self.out_proj = nn.Linear(self.nv * self.dv, h, bias=False)

    def forward(self, x: torch.Tensor, cache: Optional[Cache]) -> torch.Tensor:
        b, s, _ = x.shape
        r = self.nv // self.nk
        qkvz = self.in_proj_qkvz(x).view(b, s, self.nk, -1)
        q, k, v, z = qkvz.split([self.dk, self.dk, r * self.dv, r * self.dv], dim=-1)
        beta, alpha = self.in_proj_ba(x).view(b, s, self.nk, 2 * r).split([r, r], dim=-1)
        mixed = torch.cat([t.reshape(b, s, -1) for t in (q, k, v)], dim=-1).transpose(1, 2)
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if cache is not None:  # left context: the cached last inputs (none at prefill)
            mixed = cache.update_conv_state(mixed, self.layer_idx, conv_kernel_size=self.kernel)
        conv = F.conv1d(mixed, self.conv1d.weight, padding=self.kernel - 1, groups=self.conv_dim)
        mixed = F.silu(conv[..., : mixed.shape[-1]][..., -s:]).transpose(1, 2)
        q, k, v = mixed.split([self.nk * self.dk, self.nk * self.dk, self.nv * self.dv], dim=-1)
        q = _l2norm(q.reshape(b, s, self.nk, self.dk)).repeat_interleave(r, dim=2)
        k = _l2norm(k.reshape(b, s, self.nk, self.dk)).repeat_interleave(r, dim=2)
        v = v.reshape(b, s, self.nv, self.dv)
        g = -self.A_log.float().exp() * F.softplus(alpha.reshape(b, s, self.nv).float() + self.dt_bias.float())
        o, state = gated_delta_rule(q, k, v, g, beta.reshape(b, s, self.nv).sigmoid(), state)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        y = (self.norm(o) * F.silu(z.reshape(b, s, self.nv, self.dv).float())).to(o.dtype)
        return self.out_proj(y.reshape(b, s, -1))


class GatedNormMLP(nn.Module):
    def __init__(self, config: GatedNormConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GatedNormSparseMoeBlock(nn.Module):
    def __init__(self, config: GatedNormConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedNormMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        self.shared_expert = None
        self.shared_expert_gate = None
        if config.shared_expert_intermediate_size:
            self.shared_expert = GatedNormMLP(config, config.shared_expert_intermediate_size)
            if config.shared_expert_gate:
                self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(flat).float(), dim=-1)
        top_p, top_i = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        top_p = top_p.to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(top_i == e)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * top_p[token, slot, None])
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = shared * torch.sigmoid(self.shared_expert_gate(flat))
            out = out + shared
        return out.reshape(shape)


class GatedNormDecoderLayer(nn.Module):
    def __init__(self, config: GatedNormConfig, layer_idx: int):
        super().__init__()
        self.residual_clip = config.residual_clip
        self.input_layernorm = GatedNormRMSNorm(config.hidden_size, config.slot_variant("attn"), config)
        if config.is_linear_attention(layer_idx):
            self.linear_attn = GatedNormGatedDeltaNet(config, layer_idx)
        else:
            self.self_attn = GatedNormAttention(config, layer_idx)
        self.post_attention_layernorm = GatedNormRMSNorm(config.hidden_size, config.slot_variant("mlp"), config)
        if config.num_experts and config.moe_layer_pattern[layer_idx]:
            self.mlp = GatedNormSparseMoeBlock(config)
        else:
            self.mlp = GatedNormMLP(config, config.intermediate_size)

    def _add(self, residual, out):
        h = residual + out
        return h if self.residual_clip is None else h.clamp(-self.residual_clip, self.residual_clip)

    def forward(self, x, cos, sin, mask, cache, output_attentions: bool = False):
        if hasattr(self, "linear_attn"):
            attn, probs = self.linear_attn(self.input_layernorm(x), cache), None
        else:
            attn, probs = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, output_attentions)
        x = self._add(x, attn)
        return self._add(x, self.mlp(self.post_attention_layernorm(x))), probs


class GatedNormPreTrainedModel(PreTrainedModel):
    config_class = GatedNormConfig
    config: GatedNormConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["GatedNormDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, GatedNormRMSNorm):
            init.constant_(module.weight, 0.0 if module.zero_centered_gamma else 1.0)
            if module.pre_affine:
                init.ones_(module.pre_scale)
            if module.dyt:
                init.constant_(module.alpha, 0.5)
                init.zeros_(module.bias)
            if module.gated:
                init.normal_(module.gate_down, mean=0.0, std=std)
                init.zeros_(module.gate_up)
        elif isinstance(module, GatedNormGatedDeltaNet):  # Megatron's GatedDeltaNet init
            init.normal_(module.conv1d.weight, mean=0.0, std=std)
            init.ones_(module.dt_bias)
            init.uniform_(module.A_log, a=0.0, b=2.772588722239781)  # A = exp(A_log) log-uniform in [1, 16]


def _causal_mask(attention_mask, batch, q_len, past, device):
    """Boolean SDPA mask [b, 1, q, kv] (True = attend); rows with no key attend everywhere."""
    q_pos = torch.arange(past, past + q_len, device=device)
    k_pos = torch.arange(past + q_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None].expand(batch, 1, q_len, past + q_len)
    if attention_mask is not None and attention_mask.dim() == 2:
        mask = mask & attention_mask[:, None, None, : past + q_len].bool()
    return mask | ~mask.any(dim=-1, keepdim=True)


class GatedNormModel(GatedNormPreTrainedModel):
    def __init__(self, config: GatedNormConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GatedNormDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GatedNormRMSNorm(config.hidden_size, config.slot_variant("final"), config)
        self.rotary_emb = GatedNormRotaryEmbedding(config)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("specify exactly one of input_ids or inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            try:
                cache = DynamicCache(config=self.config)
            except TypeError:  # pragma: no cover - older transformers
                cache = DynamicCache()
        b, s = h.shape[:2]
        softmax_layers = not self.config.layer_types or "full_attention" in self.config.layer_types
        past = cache.get_seq_length() if cache is not None and softmax_layers else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + s, device=h.device)[None].expand(b, s)
        cos, sin = self.rotary_emb(position_ids)
        mask = _causal_mask(attention_mask, b, s, past, h.device)
        states, attentions = [], []
        for layer in self.layers:
            states.append(h)
            h, probs = layer(h, cos, sin, mask, cache if use_cache else None, bool(output_attentions))
            attentions.append(probs)
        h = self.norm(h)
        states.append(h)  # as transformers' Llama/Qwen3: the last entry is after the final norm
        return BaseModelOutputWithPast(
            last_hidden_state=h, **{_CACHE_FIELD: cache if use_cache else None},
            hidden_states=tuple(states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class GatedNormForCausalLM(GatedNormPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: GatedNormConfig):
        super().__init__(config)
        self.model = GatedNormModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache if cache is not None else kwargs.get("past_key_values"),
            inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)},
            hidden_states=out.hidden_states, attentions=out.attentions,
        )


__all__ = ["GatedNormForCausalLM", "GatedNormModel", "GatedNormPreTrainedModel"]
