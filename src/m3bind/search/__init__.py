"""Cross-modal search over an archive of studies embedded by a bound model (docs/search.md).

Modules, from the bottom up: ``vectors`` (FAISS kinds), ``store`` (SQLite metadata and
vectors), ``layout`` (the index folder and index.json), ``model_identity`` (model
fingerprints), ``embedding`` (streaming studies through the model), ``writer`` and
``building`` (create, resume, add, remove, merge shards), ``index`` and ``query`` (searching),
``thumbnails``, ``uploads``, ``limits`` and ``server`` (the HTTP service and its page in
``static/``), ``commands`` (the CLI commands).
"""
