"""BarcodeMAE: a masked autoencoder over k-mer tokens of DNA barcodes.

Pretraining (`BarcodeMAEForPreTraining`, ``objective="mae"``): a fraction of each barcode's k-mer tokens is
masked; the encoder sees only the kept tokens (with their original positions); a decoder gets the encoder
output restored to full length, a learned mask embedding at masked positions, and predicts the masked k-mers.
With ``objective="mlm"`` the same encoder is trained BarcodeBERT-style: masked tokens are replaced by
``[MASK]`` (80/10/10) and the encoder itself predicts them. After pretraining only the encoder
(`BarcodeMAEModel`) is kept; the barcode embedding is the mean of its last hidden states over real tokens.

Two block designs share the modules (``config.norm_position``): pre-norm with rotary positions (the ``small``
preset) and BERT's post-norm with learned positions and an embedding LayerNorm, the authors' (``paper``), whose
encoder computes what a transformers ``BertModel`` does with the same weights (see ``barcodemae/convert.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput

try:
    from .configuration_barcodemae import BarcodeMAEConfig
except ImportError:  # imported as a top-level module (tests, train.py)
    from configuration_barcodemae import BarcodeMAEConfig

IGNORE_INDEX = -100


@dataclass
class BarcodeMAEForPreTrainingOutput(ModelOutput):
    """Output of `BarcodeMAEForPreTraining`.

    Args:
        loss: cross-entropy over the masked positions (MAE: times ``masked_loss_weight``, plus ``visible_loss_weight``
            times the cross-entropy of reconstructing the visible k-mers).
        logits: predictions where there is something to predict (the head runs only there), detached (the loss's
            gradients are computed with them, see `LinearCrossEntropy`). MAE: ``(batch, masked_length,
            vocab_size)``, one slot per masked token (static shapes, see `random_masking`); MLM: ``(num_scored,
            vocab_size)`` in the row-major order of ``labels != -100``.
        labels: the targets, -100 where nothing is scored. MAE: ``(batch, masked_length)``, slot by slot; MLM:
            ``(batch, length)``.
        mask: ``(batch, length)`` 1 where a token was masked, 0 where it was kept or is padding.
        ids_restore: ``(batch, length)`` MAE only: the permutation that restores the original order from the
            shuffled order (kept tokens first), as in ViT-MAE.
        masked_positions: ``(batch, masked_length)`` MAE only: the sequence position of each slot of ``logits``.
        hidden_states: encoder hidden states (embeddings + every layer), if requested.
        genus_loss: the auxiliary genus-classification loss (already in ``loss`` with its weight), if computed.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    mask: torch.LongTensor | None = None
    ids_restore: torch.LongTensor | None = None
    masked_positions: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    genus_loss: torch.FloatTensor | None = None

    def scored(self) -> tuple[torch.LongTensor, torch.LongTensor]:
        """``(predicted ids, target ids)`` of every scored token, flat, for either objective."""
        scored = self.labels != IGNORE_INDEX
        predicted = self.logits.argmax(-1)
        return (predicted[scored] if predicted.shape == scored.shape else predicted), self.labels[scored]


@dataclass
class RandomMasking:
    """A per-sequence random masking: ``ids_shuffle`` puts kept tokens first, then masked ones, then padding.

    ``kept_length`` and ``masked_length`` are the encoder's and the loss's slot counts, fixed by the padded length
    (see `random_masking`); ``num_kept`` may exceed ``kept_length`` only in rows with many ``[UNK]`` tokens, whose
    extra kept tokens are then left out of the encoder input."""

    ids_shuffle: torch.LongTensor
    ids_restore: torch.LongTensor
    num_kept: torch.LongTensor
    num_masked: torch.LongTensor
    mask: torch.BoolTensor
    kept_length: int
    masked_length: int


def random_masking(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    mask_ratio: float,
    first_kmer_id: int,
    sampling: str = "count",
) -> RandomMasking:
    """Mask the ACGT k-mer tokens of every sequence at random: ``floor(mask_ratio * n)`` of its ``n`` k-mers
    (``sampling="count"``), or each one independently with probability ``mask_ratio`` (``"bernoulli"``: a binomial
    count per row, then the same uniform choice of which).

    Special tokens (``[UNK]``, ``[CLS]``, ``[SEP]``) are always kept and padding is never masked: they get
    noise below / above every maskable token before the argsort, so one sort orders each row as
    kept | masked | padding.

    Static shapes (``torch.compile`` reuses one graph per padded length ``L``): no row keeps more than
    ``kept_length`` tokens nor masks more than ``masked_length``: ``L - floor(mask_ratio * L)`` and
    ``floor(mask_ratio * L)`` for ``"count"``; for ``"bernoulli"`` the mean plus six standard deviations (a row
    beyond it has probability ~1e-9). A row whose ``[UNK]`` tokens would leave it more kept tokens masks that many
    more k-mers (when it has them). Run eagerly, the two lengths shrink to the batch's largest counts: the same
    masking and loss with fewer empty slots (for ``"bernoulli"``, well under the static bound).
    """
    length = input_ids.shape[1]
    real = attention_mask.bool()
    maskable = real & (input_ids >= first_kmer_id)
    num_real, num_maskable = real.sum(1), maskable.sum(1)
    if sampling == "bernoulli":
        spread = 6 * math.sqrt(length * mask_ratio * (1 - mask_ratio))
        masked_length = min(length, math.ceil(mask_ratio * length + spread))
        kept_length = min(length, math.ceil((1 - mask_ratio) * length + spread))
        drawn = (maskable & (torch.rand(input_ids.shape, device=input_ids.device) < mask_ratio)).sum(1)
    else:
        masked_length = math.floor(mask_ratio * length)
        kept_length = length - masked_length
        drawn = (num_maskable * mask_ratio).floor().long()
    num_masked = torch.maximum(drawn, num_real - kept_length)
    num_masked = torch.minimum(num_masked.clamp(max=masked_length), num_maskable)
    num_kept = num_real - num_masked
    if not torch.compiler.is_compiling():  # eager: no more slots than this batch fills (one host sync)
        kept_length, masked_length = min(kept_length, int(num_kept.max())), min(masked_length, int(num_masked.max()))
    noise = torch.rand(input_ids.shape, device=input_ids.device)
    noise = torch.where(maskable, noise, torch.where(real, -1.0, 2.0))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = real & (ids_restore >= num_kept[:, None])
    return RandomMasking(ids_shuffle, ids_restore, num_kept, num_masked, mask, kept_length, masked_length)


class LinearCrossEntropy(torch.autograd.Function):
    """``(loss, logits)``: the mean cross-entropy of ``F.linear(hidden, weight, bias)`` against ``labels`` (rows
    labelled -100 left out) and the logits (detached), a chunk of ``chunk_rows`` rows at a time. Each chunk's
    gradients are computed in the forward pass while its logits are in cache, so the ``(rows, vocabulary)`` logits,
    the largest tensors of a pretraining step, are written once and never kept for the backward pass (the small
    preset's step: peak memory 2-16% lower, benchmarks/RESULTS.md). Loss and gradients equal
    ``F.cross_entropy(F.linear(...))`` up to rounding (tested). The products run in the autocast dtype when autocast
    is on, the softmax in float32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        with torch.autocast(device, enabled=False):
            weight_c, bias_c = weight.to(dtype), bias.to(dtype)
            scored = labels != IGNORE_INDEX
            count = scored.sum()
            logits_out = torch.empty((len(hidden), len(weight)), dtype=dtype, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_hidden else None  # every chunk's rows are written
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_bias else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, len(hidden), chunk_rows):
                rows = slice(start, start + chunk_rows)
                chunk = hidden[rows].to(dtype)
                logits = torch.addmm(bias_c, chunk, weight_c.t())
                logits_out[rows] = logits
                logits = logits.float()
                target, valid = labels[rows].clamp_min(0)[:, None], scored[rows][:, None]
                log_norm = logits.logsumexp(1, keepdim=True)
                total = total + ((log_norm - logits.gather(1, target)) * valid).sum()
                if not (needs_hidden or needs_weight or needs_bias):
                    continue
                grad = (logits - log_norm).exp_()  # softmax, then minus the one-hot target, over the scored count
                grad.scatter_add_(1, target, -valid.float()).mul_(valid / count)
                if needs_bias:
                    grad_bias += grad.sum(0)
                grad = grad.to(dtype)
                if needs_hidden:
                    grad_hidden[rows] = grad @ weight_c
                if needs_weight:
                    grad_weight += (grad.t() @ chunk).float()
        ctx.mark_non_differentiable(logits_out)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        return total / count, logits_out

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        grads = [None if g is None else (g * grad_loss).to(t) for g, t in zip(ctx.saved_tensors, ctx.dtypes)]
        return *grads, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, linear: nn.Linear, labels: torch.LongTensor, chunk_rows: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean cross-entropy over the labels that are not -100, detached logits (*labels.shape, vocabulary))`` of
    ``linear(hidden)``; see :class:`LinearCrossEntropy`."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    loss, logits = LinearCrossEntropy.apply(flat, linear.weight, linear.bias, labels.reshape(-1), chunk_rows)
    return loss, logits.view(*labels.shape, -1)


def padding_mask_for_attention(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(batch, 1, 1, length)`` boolean key mask for SDPA, or None when nothing is padded."""
    if attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all())):
        return None
    keys = attention_mask.bool()
    keys = keys | ~keys.any(dim=1, keepdim=True)  # an all-padding row attends everywhere instead of producing NaN
    return keys[:, None, None, :]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) computed from explicit position ids.

    The frequencies are recomputed at each call rather than kept in a buffer: a non-persistent buffer is left
    uninitialised when `from_pretrained` builds the model on the meta device, and the cost is negligible."""

    def __init__(self, head_size: int, theta: float):
        super().__init__()
        self.head_size = head_size
        self.theta = theta

    def forward(self, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, self.head_size, 2, device=position_ids.device, dtype=torch.float32)
        inv_freq = 1.0 / self.theta ** (exponents / self.head_size)
        angles = position_ids[:, None, :, None].float() * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-second, first], dim=-1) * sin).to(x.dtype)


class BarcodeMAEAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_size)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if rotary is not None:
            query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.output(attended.transpose(1, 2).reshape(batch, length, width))


class BarcodeMAELayer(GradientCheckpointingLayer):
    """Transformer block. Pre-norm: x + attention(norm(x)), then x + MLP(norm(x)). Post-norm (BERT's layer):
    norm(x + attention(x)), then norm(x + MLP(x))."""

    def __init__(self, width: int, heads: int, ffn: int, config: BarcodeMAEConfig):
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.attention_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention = BarcodeMAEAttention(width, heads, config.attention_probs_dropout_prob)
        self.mlp_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), ACT2FN[config.hidden_act], nn.Linear(ffn, width))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, key_mask=None, rotary=None):
        if self.post_norm:
            attended = self.attention(hidden_states, key_mask, rotary)
            hidden_states = self.attention_norm(hidden_states + self.dropout(attended))
            return self.mlp_norm(hidden_states + self.dropout(self.mlp(hidden_states)))
        attended = self.attention(self.attention_norm(hidden_states), key_mask, rotary)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class BarcodeMAETransformer(nn.Module):
    """A stack of blocks, with a final LayerNorm when they are pre-norm; used by both encoder and decoder."""

    def __init__(self, width: int, layers: int, heads: int, ffn: int, config: BarcodeMAEConfig):
        super().__init__()
        self.layers = nn.ModuleList(BarcodeMAELayer(width, heads, ffn, config) for _ in range(layers))
        pre_norm = config.norm_position == "pre"
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps) if pre_norm else nn.Identity()
        use_rotary = config.position_embedding_type == "rotary"
        self.rotary = RotaryEmbedding(width // heads, config.rope_theta) if use_rotary else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        key_mask = padding_mask_for_attention(attention_mask)
        rotary = self.rotary(position_ids) if self.rotary is not None else None
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, key_mask, rotary)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden[-1] = hidden_states
        return hidden_states, tuple(all_hidden) if all_hidden is not None else None


class BarcodeMAEPreTrainedModel(PreTrainedModel):
    config_class = BarcodeMAEConfig
    base_model_prefix = "barcodemae"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["BarcodeMAELayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BarcodeMAEDecoder):
            init.normal_(module.mask_embedding, std=self.config.initializer_range)
        if isinstance(module, CosineClassifier):
            init.normal_(module.weight, std=self.config.initializer_range)


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where ``attention_mask`` is 1; an all-padding row gives zeros."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def shift_frame(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    shift: int,
    config: BarcodeMAEConfig,
    position_ids: torch.LongTensor | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """The non-overlapping k-mers of the same barcodes read ``shift`` bases (0 < shift < k) further on, derived
    from the ids: k-mer ``i`` of the new frame is the last ``k - shift`` bases of k-mer ``i`` and the first
    ``shift`` of k-mer ``i + 1``. It is ``[UNK]`` when either source is not an ACGT k-mer, and a barcode loses
    its last token (its trailing bases were not tokenised). With ``position_ids`` (tokens deleted), a k-mer
    across a gap (positions not consecutive) does not exist in the barcode and is masked out."""
    k, first = config.k_mer, config.first_kmer_id
    head, tail = input_ids[:, :-1], input_ids[:, 1:]
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    if position_ids is not None:
        valid = valid & (position_ids[:, 1:] == position_ids[:, :-1] + 1)
    known = (head >= first) & (tail >= first)
    suffix = (head - first).clamp(min=0) % 4 ** (k - shift)
    prefix = (tail - first).clamp(min=0) // 4 ** (k - shift)
    shifted = torch.where(known, first + suffix * 4**shift + prefix, config.unk_token_id)
    shifted = shifted.masked_fill(~valid, config.pad_token_id)
    return shifted, valid.to(attention_mask.dtype)


def overlapping_kmers(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    config: BarcodeMAEConfig,
    position_ids: torch.LongTensor | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Every overlapping k-mer of the barcodes, derived from their non-overlapping ids: the k reading frames
    side by side, ``(batch, k * length - k + 1)``, with a mask that is 1 exactly at ACGT k-mers (``[UNK]``,
    special tokens, padding and, with ``position_ids``, k-mers across a deletion are 0)."""
    frames, masks = [input_ids], [attention_mask]
    for shift in range(1, config.k_mer):
        ids, mask = shift_frame(input_ids, attention_mask, shift, config, position_ids)
        frames.append(ids)
        masks.append(mask)
    ids, mask = torch.cat(frames, dim=1), torch.cat(masks, dim=1)
    return ids, mask * (ids >= config.first_kmer_id).to(mask.dtype)


class BarcodeMAEModel(BarcodeMAEPreTrainedModel):
    """The BarcodeMAE encoder. ``pooler_output`` is the barcode embedding (``config.readout``): the mean of the
    last hidden states over real (non-padding) tokens, the mean of the token embeddings of all overlapping
    k-mers, or both; padding never changes it."""

    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\.", r"^genus_head\."]

    def __init__(self, config: BarcodeMAEConfig):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        absolute = config.position_embedding_type == "absolute"
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size) if absolute else None
        )
        post_norm = config.norm_position == "post"
        self.embedding_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if post_norm else nn.Identity()
        )
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = BarcodeMAETransformer(
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config,
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        embedding_frames: int | None = None,
        readout: str | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode k-mer ids. ``position_ids`` default to ``0..length-1``; the MAE passes the original positions
        of the kept tokens. ``embedding_frames`` and ``readout`` override the config's (pretraining passes 1 and
        ``"mean"``: its pooled output is unused)."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {input_ids.shape[1]} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; tokenize with truncation=True."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_hidden_state, all_hidden = self._encode(
            input_ids, attention_mask, position_ids, bool(output_hidden_states)
        )
        frames = self.config.embedding_frames if embedding_frames is None else embedding_frames
        readout = readout or self.config.readout
        pooled = self._readout(readout, last_hidden_state, input_ids, attention_mask, position_ids, frames)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=all_hidden
        )
        return output if return_dict is not False else output.to_tuple()

    def _encode(self, input_ids, attention_mask, position_ids, output_hidden_states=False):
        hidden_states = self.token_embeddings(input_ids)
        if self.position_embeddings is not None:
            hidden_states = hidden_states + self.position_embeddings(position_ids)
        hidden_states = self.embedding_dropout(self.embedding_norm(hidden_states))
        return self.encoder(hidden_states, attention_mask, position_ids, output_hidden_states)

    def _readout(self, readout, last_hidden_state, input_ids, attention_mask, position_ids, frames) -> torch.Tensor:
        if readout == "kmer_bag":
            return self.kmer_bag(input_ids, attention_mask, position_ids)
        pooled = masked_mean(last_hidden_state, attention_mask)
        if frames > 1:
            pooled = self._pool_frames(pooled, input_ids, attention_mask, position_ids, frames)
        if readout == "mean+kmer_bag":
            bag = self.kmer_bag(input_ids, attention_mask, position_ids)
            pooled = torch.cat([F.normalize(pooled, dim=-1), F.normalize(bag, dim=-1)], dim=-1)
        return pooled

    def barcode_embedding(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """``pooler_output`` alone, without running the transformer layers when the readout does not need them
        (``readout="kmer_bag"``: embedding lookups only)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.readout == "kmer_bag":
            return self.kmer_bag(input_ids, attention_mask, position_ids)
        return self(input_ids, attention_mask, position_ids).pooler_output

    def kmer_bag(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, position_ids: torch.LongTensor | None = None
    ) -> torch.Tensor:
        """``(batch, hidden)``: the mean token embedding over every overlapping ACGT k-mer (zeros when none; with
        ``position_ids``, none across a deletion)."""
        ids, mask = overlapping_kmers(input_ids, attention_mask, self.config, position_ids)
        weight = self.token_embeddings.weight
        summed = F.embedding_bag(ids, weight, mode="sum", per_sample_weights=mask.to(weight.dtype))
        return summed / mask.sum(1, keepdim=True).clamp(min=1).to(weight.dtype)  # (no (batch, k*length, hidden) copy)

    def _pool_frames(self, pooled, input_ids, attention_mask, position_ids, count: int) -> torch.Tensor:
        """Mean of the pooled embeddings of the given frame and of ``count - 1`` shifted ones."""
        frames = [pooled]
        for shift in range(1, count):
            ids, mask = shift_frame(input_ids, attention_mask, shift, self.config, position_ids)
            hidden, _ = self._encode(ids, mask, position_ids[:, :-1])
            frames.append(torch.where(mask.any(1, keepdim=True), masked_mean(hidden, mask), pooled))
        return torch.stack(frames).mean(0)


class BarcodeMAEDecoder(nn.Module):
    """MAE decoder: project, insert the mask embedding at masked positions, unshuffle, add positions (post-norm:
    then LayerNorm and dropout, as BERT embeddings), transformer; ``prediction`` maps its states to k-mer logits
    (post-norm: after dropout, as BERT's token-classification head)."""

    def __init__(self, config: BarcodeMAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        post_norm = config.norm_position == "post"
        projected = post_norm or width != config.hidden_size
        self.projection = nn.Linear(config.hidden_size, width) if projected else nn.Identity()
        self.mask_embedding = nn.Parameter(torch.zeros(1, 1, width))
        absolute = config.position_embedding_type == "absolute"
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width) if absolute else None
        self.embedding_norm = nn.LayerNorm(width, eps=config.layer_norm_eps) if post_norm else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob) if post_norm else nn.Identity()
        self.transformer = BarcodeMAETransformer(
            width,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
            config,
        )
        self.prediction = nn.Linear(width, config.vocab_size)

    def forward(
        self,
        encoded: torch.Tensor,
        kept_attention: torch.Tensor,
        ids_restore: torch.LongTensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        batch, length = ids_restore.shape
        hidden = self.projection(encoded)
        mask_embedding = self.mask_embedding.to(hidden.dtype)
        hidden = torch.where(kept_attention[..., None].bool(), hidden, mask_embedding)
        filler = mask_embedding.expand(batch, length - hidden.shape[1], -1)
        hidden = torch.cat([hidden, filler], dim=1)
        hidden = torch.gather(hidden, 1, ids_restore[..., None].expand(-1, -1, hidden.shape[-1]))
        position_ids = torch.arange(length, device=hidden.device).expand(batch, -1)
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings(position_ids)
        hidden, _ = self.transformer(self.dropout(self.embedding_norm(hidden)), attention_mask, position_ids)
        return hidden


class BarcodeMAEPredictionHead(nn.Module):
    """BERT-style masked-token head for the MLM baseline: dense → activation → LayerNorm → vocabulary."""

    def __init__(self, config: BarcodeMAEConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.prediction = nn.Linear(config.hidden_size, config.vocab_size)

    def transform(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The states the vocabulary layer reads."""
        return self.norm(self.activation(self.dense(hidden_states)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.transform(hidden_states))


class CosineClassifier(nn.Module):
    """Logits = ``scale`` x cosine(embedding, class vector): a softmax over cosines trains the embedding for
    cosine nearest-neighbour search (NormFace)."""

    def __init__(self, in_features: int, num_labels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.scale = scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T


class BarcodeMAEForPreTraining(BarcodeMAEPreTrainedModel):
    """Encoder plus the pretraining head of ``config.objective``: the MAE decoder (``decoder``) or the
    BarcodeBERT-style MLM head (``lm_head``)."""

    def __init__(self, config: BarcodeMAEConfig):
        super().__init__(config)
        self.barcodemae = BarcodeMAEModel(config)
        if config.objective == "mae":
            self.decoder = BarcodeMAEDecoder(config)
        else:
            self.lm_head = BarcodeMAEPredictionHead(config)
        if config.genus_loss_weight > 0:
            self.genus_head = CosineClassifier(config.hidden_size, config.num_genus_labels, config.classifier_scale)
        if getattr(config, "auto_map", None) is None:
            config.auto_map = dict(PRETRAINING_AUTO_MAP)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        genus_labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> BarcodeMAEForPreTrainingOutput | tuple:
        """MAE: masks inside (``labels`` must be None; targets are the input ids). MLM: pass ``input_ids``
        already masked with ``labels`` (e.g. from ``DataCollatorForLanguageModeling``), or let the model mask
        (BERT 80/10/10 on ``mask_ratio`` of the k-mer tokens). ``genus_labels`` (``(batch,)``, -100 for rows
        without a label) add the auxiliary genus loss when ``config.genus_loss_weight > 0``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.objective == "mae":
            if labels is not None:
                raise ValueError("The MAE objective masks internally; do not pass labels.")
            output, encoded, seen = self._forward_mae(input_ids, attention_mask, bool(output_hidden_states))
        else:
            output, encoded, seen = self._forward_mlm(input_ids, attention_mask, labels, bool(output_hidden_states))
        if genus_labels is not None and self.config.genus_loss_weight > 0:
            output.genus_loss = self._genus_loss(encoded, seen, genus_labels)
            output.loss = output.loss + self.config.genus_loss_weight * output.genus_loss
        return output if return_dict is not False else output.to_tuple()

    def _genus_loss(self, encoded: torch.Tensor, seen: torch.Tensor, genus_labels: torch.LongTensor) -> torch.Tensor:
        """Cross-entropy of the cosine genus classifier on the mean output of the tokens the encoder saw; zero (with
        a graph) for a batch without labelled rows."""
        labelled = genus_labels != IGNORE_INDEX
        logits = self.genus_head(masked_mean(encoded[labelled], seen[labelled]))
        if not bool(labelled.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), genus_labels[labelled])

    def _forward_mae(self, input_ids, attention_mask, output_hidden_states):
        config = self.config
        masking = random_masking(
            input_ids, attention_mask, config.mask_ratio, config.first_kmer_id, config.mask_sampling
        )
        ids_keep = masking.ids_shuffle[:, : masking.kept_length]
        slots = torch.arange(masking.kept_length, device=input_ids.device)[None, :]
        kept_attention = slots < masking.num_kept[:, None]
        kept_ids = torch.gather(input_ids, 1, ids_keep).masked_fill(~kept_attention, config.pad_token_id)
        encoded = self.barcodemae(
            kept_ids,
            attention_mask=kept_attention.long(),
            position_ids=ids_keep.masked_fill(~kept_attention, 0),
            output_hidden_states=output_hidden_states,
            embedding_frames=1,
            readout="mean",
        )
        decoded = self.decoder(encoded.last_hidden_state, kept_attention, masking.ids_restore, attention_mask)
        masked_positions, labels = self._masked_slots(input_ids, masking)
        prediction = self.decoder.prediction
        masked_loss, logits = linear_cross_entropy(self._states_at(decoded, masked_positions), prediction, labels)
        loss = config.masked_loss_weight * masked_loss
        if config.visible_loss_weight > 0:
            visible = kept_attention & (kept_ids >= config.first_kmer_id)
            visible_labels = kept_ids.masked_fill(~visible, IGNORE_INDEX)
            visible_loss, _ = linear_cross_entropy(self._states_at(decoded, ids_keep), prediction, visible_labels)
            loss = loss + config.visible_loss_weight * visible_loss
        output = BarcodeMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            mask=masking.mask.long(),
            ids_restore=masking.ids_restore,
            masked_positions=masked_positions,
            hidden_states=encoded.hidden_states,
        )
        return output, encoded.last_hidden_state, kept_attention

    @staticmethod
    def _masked_slots(input_ids: torch.LongTensor, masking: RandomMasking) -> tuple[torch.LongTensor, torch.LongTensor]:
        """``(positions, targets)``, both ``(batch, masked_length)``: each row's masked tokens in shuffled order,
        then unused slots (position 0, target -100)."""
        slots = torch.arange(masking.masked_length, device=input_ids.device)[None, :]
        used = slots < masking.num_masked[:, None]
        shuffled = (masking.num_kept[:, None] + slots).clamp(max=input_ids.shape[1] - 1)
        positions = torch.gather(masking.ids_shuffle, 1, shuffled).masked_fill(~used, 0)
        return positions, torch.gather(input_ids, 1, positions).masked_fill(~used, IGNORE_INDEX)

    def _states_at(self, decoded: torch.Tensor, positions: torch.LongTensor) -> torch.Tensor:
        """The decoder states at ``positions`` (``(batch, slots)``), as the prediction layer reads them."""
        gathered = torch.gather(decoded, 1, positions[..., None].expand(-1, -1, decoded.shape[-1]))
        return self.decoder.dropout(gathered)

    def _forward_mlm(self, input_ids, attention_mask, labels, output_hidden_states):
        if labels is None:
            input_ids, labels = self.mask_for_mlm(input_ids, attention_mask)
        encoded = self.barcodemae(
            input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            embedding_frames=1,
            readout="mean",
        )
        scored = labels != IGNORE_INDEX
        hidden = self.lm_head.transform(encoded.last_hidden_state[scored])
        loss, logits = linear_cross_entropy(hidden, self.lm_head.prediction, labels[scored])
        output = BarcodeMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            mask=scored.long(),
            hidden_states=encoded.hidden_states,
        )
        return output, encoded.last_hidden_state, attention_mask

    def mask_for_mlm(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """BERT masking of ``mask_ratio`` of the k-mer tokens: 80% ``[MASK]``, 10% random k-mer, 10% unchanged."""
        config = self.config
        masked = random_masking(
            input_ids, attention_mask, config.mask_ratio, config.first_kmer_id, config.mask_sampling
        ).mask
        labels = input_ids.masked_fill(~masked, IGNORE_INDEX)
        draw = torch.rand(input_ids.shape, device=input_ids.device)
        random_kmers = torch.randint_like(input_ids, config.first_kmer_id, config.vocab_size)
        corrupted = torch.where(masked & (draw < 0.8), config.mask_token_id, input_ids)
        corrupted = torch.where(masked & (draw >= 0.8) & (draw < 0.9), random_kmers, corrupted)
        return corrupted, labels

    def save_encoder(self, out_dir: str | os.PathLike, tokenizer=None) -> None:
        """Write the encoder-only Hub folder: config (with ``auto_map``), weights without the decoder,
        tokenizer files and the remote-code modules; loadable with ``AutoModel``/``AutoTokenizer`` and
        ``trust_remote_code=True``."""
        pretraining_auto_map = self.config.auto_map
        self.config.auto_map = dict(ENCODER_AUTO_MAP)
        try:
            self.barcodemae.save_pretrained(out_dir)
        finally:
            self.config.auto_map = pretraining_auto_map
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)


@dataclass
class BarcodeMAEClassifierOutput(SequenceClassifierOutput):
    """`SequenceClassifierOutput` plus ``embeddings``: the barcode embeddings the classifier saw (``pooler_output``)."""

    embeddings: torch.FloatTensor | None = None


class BarcodeMAEForSequenceClassification(BarcodeMAEPreTrainedModel):
    """Encoder + linear classifier on the barcode embedding (species or genus). With
    ``config.freeze_encoder`` the encoder stays frozen and in eval mode: a linear probe."""

    def __init__(self, config: BarcodeMAEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.barcodemae = BarcodeMAEModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.classifier_type == "cosine":
            self.classifier = CosineClassifier(config.embedding_size, config.num_labels, config.classifier_scale)
        else:
            self.classifier = nn.Linear(config.embedding_size, config.num_labels)
        if config.freeze_encoder:
            self.barcodemae.requires_grad_(False)
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.barcodemae.eval()
        return self

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BarcodeMAEClassifierOutput | tuple:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            if output_hidden_states:
                encoded = self.barcodemae(input_ids, attention_mask, output_hidden_states=True)
            else:
                encoded = BaseModelOutputWithPooling(
                    pooler_output=self.barcodemae.barcode_embedding(input_ids, attention_mask)
                )
        logits = self.classifier(self.dropout(encoded.pooler_output))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        output = BarcodeMAEClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, embeddings=encoded.pooler_output
        )
        return output if return_dict is not False else output.to_tuple()


ENCODER_AUTO_MAP = {
    "AutoConfig": "configuration_barcodemae.BarcodeMAEConfig",
    "AutoModel": "modeling_barcodemae.BarcodeMAEModel",
    "AutoModelForSequenceClassification": "modeling_barcodemae.BarcodeMAEForSequenceClassification",
}
PRETRAINING_AUTO_MAP = {**ENCODER_AUTO_MAP, "AutoModelForPreTraining": "modeling_barcodemae.BarcodeMAEForPreTraining"}

BarcodeMAEConfig.register_for_auto_class()
BarcodeMAEModel.register_for_auto_class("AutoModel")
BarcodeMAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
BarcodeMAEForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "BarcodeMAEForPreTraining",
    "BarcodeMAEForPreTrainingOutput",
    "BarcodeMAEForSequenceClassification",
    "BarcodeMAEModel",
    "BarcodeMAEPreTrainedModel",
    "random_masking",
]
