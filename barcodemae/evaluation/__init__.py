"""Model-agnostic evaluation: the BarcodeMAE/BarcodeBERT protocol on numpy embeddings.

Protocol (paper + BIOSCAN-5M benchmark), as implemented by :func:`protocol.prepare_protocol` and
:func:`tasks.evaluate_embedder`:

* Partitions: ``train`` (seen species; the reference set and the probe's training set), ``test`` (seen species,
  tuning: ``val``) and ``test_unseen`` (unseen species of seen genera, tuning: ``val_unseen``).
* De-duplication (the authors' rule): within each partition, identical barcodes (as given, i.e. already cleaned)
  are kept once, the first occurrence in input order; the same barcode may appear in two partitions.
* Closed world: species **linear probe** on frozen embeddings (features standardised on train), evaluated on
  ``test`` rows whose species occurs in ``train``; accuracy and macro-F1 in percent.
* Open world: **genus 1-NN**, cosine, of each ``test_unseen`` barcode against the ``train`` barcodes; micro and
  per-species accuracy in percent. Summary: harmonic mean of probe accuracy and genus 1-NN micro accuracy.
* Also: species 1-NN on ``test``, BIOSCAN-5M's zero-shot clustering AMI vs species and BIN
  (:func:`clustering.zero_shot_clustering`: UMAP then Ward, on every record of ``test`` + ``test_unseen``),
  representation health (effective rank, mean pairwise cosine) and robustness of genus 1-NN to masking/deletion at
  inference.
* Every accuracy comes with a bootstrap 95% interval (``<key>_interval``, :func:`metrics.identification_score`).

Rows lacking the label a task needs are excluded from that task and counted in ``result["counts"]``.

Modules, each importing only those listed before it: ``metrics`` (scores and intervals), ``paired`` (differences
between two methods), ``probe`` (linear probe), ``clustering`` (zero-shot clustering, embedding health),
``protocol`` (partitions), ``tasks`` (the protocol on one method), ``classifier`` (fine-tuned classifiers),
``report`` (Markdown tables) and ``runner`` (``barcodemae evaluate``).
"""

from barcodemae.evaluation.runner import run_evaluation

__all__ = ["run_evaluation"]
