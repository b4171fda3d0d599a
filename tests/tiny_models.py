"""Small model configurations shared by the tests (fast on CPU)."""

from configuration_barcodemae import BarcodeMAEConfig


def tiny_config(**overrides) -> BarcodeMAEConfig:
    """A 2-layer, 32-wide encoder with a 1-layer, 16-wide decoder over 4-mers; dropout off."""
    settings = dict(
        k_mer=4,
        max_length=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    settings.update(overrides)
    return BarcodeMAEConfig(**settings)
