"""Few-shot task sets from a validated snapshot: classes split into meta-train/val/test, as tensors.

- ``spec.make_spec``: what to build (by disease or drug; images, records or both; ways, shots,
  queries, seed, name);
- ``build.build_taskset(home, spec)``: refuses a snapshot that failed validation, writes
  ``H/tasksets/<name>/`` (``manifest.json`` and one safetensors file per split) and returns the
  manifest;
- ``store.load_taskset(home, name)``: the splits as in-memory tensors plus the manifest;
  ``store.list_tasksets(home)``: every manifest.

Label and case policies: ``cases``; record features and their statistics: ``features``; the class
split: ``splits``. Episodes are drawn from a loaded split with ``metalearn.sampler.EpisodeSampler``
(``TaskSplit.sampler_kwargs()``).
"""
