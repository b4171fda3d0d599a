"""BarcodeMAE model configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

OBJECTIVES = ("mae", "mlm")
POSITION_EMBEDDING_TYPES = ("absolute", "rotary")
NORM_POSITIONS = ("pre", "post")
MASK_SAMPLINGS = ("count", "bernoulli")
READOUTS = ("mean", "kmer_bag", "mean+kmer_bag")
CLASSIFIER_TYPES = ("linear", "cosine")
NUM_SPECIAL_TOKENS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK], in this order (see tokenization_barcodemae.py)


@strict
class BarcodeMAEConfig(PreTrainedConfig):
    """Configuration of a BarcodeMAE encoder and its pretraining decoder.

    Defaults are the paper's sizes: non-overlapping 6-mers of the first 660 bases (110 tokens), a BERT-size encoder
    (6 layers, 6 heads, width 768) and a decoder as large as the encoder, 50% of k-mer tokens masked.
    ``configs/paper.json`` adds the authors' block design (``norm_position="post"``) and masking
    (``mask_sampling="bernoulli"``).

    Args:
        k_mer: k-mer length; the vocabulary holds the ``4**k_mer`` ACGT k-mers plus 5 special tokens.
        stride: step between k-mer starts; must equal ``k_mer`` (non-overlapping tokens).
        max_length: longest barcode in bases; longer barcodes are truncated. Token positions:
            ``max_length // stride``.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder shape.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            MAE decoder shape (any size; a linear projection joins encoder and decoder when widths differ).
        mask_ratio: fraction of each barcode's maskable k-mer tokens hidden during pretraining.
        mask_sampling: ``"count"``: exactly ``floor(mask_ratio * n)`` of a barcode's ``n`` maskable k-mers, chosen
            uniformly; ``"bernoulli"``: each k-mer independently with probability ``mask_ratio`` (the authors').
        masked_loss_weight, visible_loss_weight: MAE only: the loss is ``masked_loss_weight`` times the
            cross-entropy of the masked k-mers plus ``visible_loss_weight`` times that of reconstructing the visible
            ones (keeps token identity in the encoder output). The authors mix ``w`` and ``1 - w`` (their default
            ``w = 1``: masked positions only).
        objective: ``"mae"`` (encoder sees only kept tokens, decoder reconstructs) or ``"mlm"``
            (BarcodeBERT baseline: ``[MASK]`` tokens in the encoder input, encoder-only prediction head).
        position_embedding_type: ``"absolute"`` (learned, as in BERT) or ``"rotary"`` (RoPE in every attention).
        norm_position: ``"pre"``: pre-norm blocks (``x + f(norm(x))``) and a final LayerNorm. ``"post"``: BERT's
            design, the authors': post-norm blocks (``norm(x + f(x))``), a LayerNorm on the embeddings and none at
            the end; the MAE decoder then always projects the encoder output, normalises its input like BERT
            embeddings (LayerNorm, dropout) and applies dropout before its prediction layer.
        hidden_dropout_prob, attention_probs_dropout_prob: dropout rates.
        hidden_act: activation of the feed-forward blocks.
        initializer_range: std of the normal weight initialisation.
        freeze_encoder: in `BarcodeMAEForSequenceClassification`, keep the encoder frozen (linear probing).
        embedding_frames: reading frames pooled into ``pooler_output`` (1..k_mer). With ``f > 1`` the barcode is
            also encoded shifted by 1..f-1 bases (k-mer ids derived from the given ones, no re-tokenisation) and
            the barcode embedding is the mean of the f frames' embeddings: less dependent on where the first
            k-mer starts, at f times the compute. ``last_hidden_state`` is always the given frame's.
        readout: what ``pooler_output`` (the barcode embedding) is. ``"mean"``: the mean of the last hidden states
            (over ``embedding_frames`` frames). ``"kmer_bag"``: the mean of the token embeddings of every
            overlapping ACGT k-mer of the barcode (all k reading frames, derived from the ids: k embedding
            lookups, no extra encoder pass). ``"mean+kmer_bag"``: both, each L2-normalised, concatenated
            (``2 * hidden_size`` wide), so a cosine is the mean of the two cosines.
        classifier_type: head of `BarcodeMAEForSequenceClassification`: ``"linear"`` or ``"cosine"`` (logits =
            ``classifier_scale`` times the cosine between the embedding and a learned vector per class, which trains
            the embedding for cosine nearest-neighbour search).
        classifier_scale: logit scale of the cosine classifier.
        genus_loss_weight: pretraining only: weight of an auxiliary genus-classification loss (BarcodeMAE+): a
            cosine classifier (``classifier_scale``) on the mean encoder output of the tokens the encoder saw, over
            ``num_genus_labels`` genera, for rows that carry a genus label (``genus_labels >= 0``). 0 = off.
        num_genus_labels: size of that classifier (set by ``train.py`` from the labelled rows).
        trained_labels: which taxonomic labels (if any) trained the encoder beyond self-supervised pretraining;
            written by `barcodemae finetune` and shown in the model card.
    """

    model_type = "barcodemae"

    k_mer: int = 6
    stride: int | None = None
    max_length: int = 660
    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    intermediate_size: int = 3072
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 6
    decoder_num_attention_heads: int = 6
    decoder_intermediate_size: int = 3072
    mask_ratio: float = 0.5
    mask_sampling: str = "count"
    masked_loss_weight: float | int = 1.0
    visible_loss_weight: float | int = 0.0
    objective: str = "mae"
    position_embedding_type: str = "absolute"
    norm_position: str = "pre"
    rope_theta: float | int = 10000.0
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    freeze_encoder: bool = False
    embedding_frames: int = 1
    readout: str = "mean"
    classifier_type: str = "linear"
    classifier_scale: float | int = 16.0
    genus_loss_weight: float | int = 0.0
    num_genus_labels: int = 0
    trained_labels: str | None = None
    pad_token_id: int | None = 0
    unk_token_id: int | None = 1
    mask_token_id: int | None = 4

    def __post_init__(self, **kwargs):
        if self.stride is None:
            self.stride = self.k_mer
        super().__post_init__(**kwargs)
        self._check_consistency()

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + 4**self.k_mer

    @property
    def embedding_size(self) -> int:
        """Width of ``pooler_output``."""
        return 2 * self.hidden_size if self.readout == "mean+kmer_bag" else self.hidden_size

    @property
    def first_kmer_id(self) -> int:
        """Token ids at or above this are ACGT k-mers; below are special tokens."""
        return NUM_SPECIAL_TOKENS

    @property
    def max_position_embeddings(self) -> int:
        return self.max_length // self.stride

    def _check_consistency(self) -> None:
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"Invalid BarcodeMAEConfig: {message}")

        require(1 <= self.k_mer <= 8, f"k_mer must be in 1..8 (got {self.k_mer})")
        require(self.stride == self.k_mer, f"stride must equal k_mer (got stride={self.stride}, k_mer={self.k_mer})")
        require(self.max_length >= self.k_mer, f"max_length ({self.max_length}) must be at least k_mer")
        require(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES} (got {self.objective!r})")
        require(
            self.position_embedding_type in POSITION_EMBEDDING_TYPES,
            f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES} (got {self.position_embedding_type!r})",
        )
        require(
            self.norm_position in NORM_POSITIONS,
            f"norm_position must be one of {NORM_POSITIONS} (got {self.norm_position!r})",
        )
        require(0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1) (got {self.mask_ratio})")
        require(
            self.mask_sampling in MASK_SAMPLINGS,
            f"mask_sampling must be one of {MASK_SAMPLINGS} (got {self.mask_sampling!r})",
        )
        require(
            1 <= self.embedding_frames <= self.k_mer,
            f"embedding_frames must be in 1..k_mer={self.k_mer} (got {self.embedding_frames})",
        )
        require(self.readout in READOUTS, f"readout must be one of {READOUTS} (got {self.readout!r})")
        require(
            self.classifier_type in CLASSIFIER_TYPES,
            f"classifier_type must be one of {CLASSIFIER_TYPES} (got {self.classifier_type!r})",
        )
        require(self.classifier_scale > 0, f"classifier_scale must be positive (got {self.classifier_scale})")
        require(self.genus_loss_weight >= 0, f"genus_loss_weight must be >= 0 (got {self.genus_loss_weight})")
        require(
            self.genus_loss_weight == 0 or self.num_genus_labels >= 2,
            f"genus_loss_weight > 0 needs num_genus_labels >= 2 (got {self.num_genus_labels})",
        )
        require(self.visible_loss_weight >= 0, f"visible_loss_weight must be >= 0 (got {self.visible_loss_weight})")
        require(self.masked_loss_weight >= 0, f"masked_loss_weight must be >= 0 (got {self.masked_loss_weight})")
        require(
            self.masked_loss_weight + self.visible_loss_weight > 0,
            "masked_loss_weight and visible_loss_weight cannot both be 0",
        )
        for prefix in ("", "decoder_"):
            width = getattr(self, f"{prefix}hidden_size")
            heads = getattr(self, f"{prefix}num_attention_heads")
            layers = getattr(self, f"{prefix}num_hidden_layers")
            ffn = getattr(self, f"{prefix}intermediate_size")
            require(min(width, heads, ffn) > 0, f"{prefix}hidden_size/heads/intermediate_size must be positive")
            require(layers >= (1 if prefix == "" else 0), f"{prefix}num_hidden_layers is too small (got {layers})")
            require(width % heads == 0, f"{prefix}hidden_size ({width}) is not a multiple of heads ({heads})")
            if self.position_embedding_type == "rotary":
                require((width // heads) % 2 == 0, f"rotary positions need an even {prefix}head size")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            require(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        require(self.initializer_range > 0, "initializer_range must be positive")


__all__ = ["BarcodeMAEConfig"]
