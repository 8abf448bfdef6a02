"""Dataset versions (``coldkeep datasets …``): immutable, deduplicated snapshots of the dataset tree.

* :mod:`.manifest` — the manifest, the checksum list, the content hash, diffs (pure);
* :mod:`.versions` — versions as the repository holds them (snapshots of kind ``dataset``);
* :mod:`.snapshot` — ``snapshot`` and ``status``;
* :mod:`.check` — ``verify``, ``restore``, ``diff``;
* :mod:`.export` — ``export`` (the spec's tarball, streamed from the repository).
"""
