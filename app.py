"""Hugging Face Space entry: the identification web page (:mod:`barcodemae.app`) on a reference index shipped with
the Space. ``python app.py`` starts it; the Space runs it the same way.

* The index is the folder ``$BARCODEMAE_INDEX``, by default ``index/`` beside this file (write it with
  ``barcodemae identify --reference library.tsv --save-index index/``). Without one, the example reference
  ``examples/reference.tsv`` is embedded at start-up.
* The model is ``$BARCODEMAE_MODEL`` when set, else the index's model folder where it exists, else the shipped
  encoder ``pretrained/barcodemae-small-genus``; an index refuses any model other than the one that embedded it.
* The address is ``$GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT`` (a Space sets them), by default 127.0.0.1:7860.
* The Space installs the package with its extra, ``barcodemae[app]``, and its README's front matter names this
  file: ``sdk: gradio``, ``app_file: app.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from barcodemae.app import launch, load_identifier

HERE = Path(__file__).resolve().parent


def main() -> None:
    index = Path(os.environ.get("BARCODEMAE_INDEX", HERE / "index"))
    source = {"index": index} if index.is_dir() else {"reference": HERE / "examples" / "reference.tsv"}
    identifier = load_identifier(**source, model=os.environ.get("BARCODEMAE_MODEL"))
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    launch(identifier, host, int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
