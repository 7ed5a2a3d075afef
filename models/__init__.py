"""Models: what every layer that trains, evaluates or scores the fraud
model shares (ARCHITECTURE.md, "Where the shared pieces live"). It imports
only the core (``lamina``), never a layer, so the speed layer and serving
can load and score the champion without the batch layer.

- ``tf`` -- ``tensorflow()``, the one way TensorFlow is imported: tf-keras
  as ``tf.keras`` (``TF_USE_LEGACY_KERAS=1``) and no no-GPU noise.
- ``saved_model`` -- a model on disk: ``save_model`` writes a SavedModel
  directory with its model card (``lamina_model.json``: features in order,
  parameters, seed, TensorFlow version, what training adds), ``load_model``
  and ``model_card`` read them back. Writing and reading the card live
  together so its format cannot drift.
- ``scoring`` -- ``score`` (batched, one traced graph per model) and
  ``numpy_scorer`` (a NumPy forward pass of the same weights, BLAS on one
  thread, for small hot-path batches); ``feature_matrix`` and ``to_pandas``
  turn a frame into what a model consumes.
- ``registry`` -- the MLflow registry client: ``ModelRegistry`` (versions,
  lineage, the ``champion`` alias, promote / reject / rollback, the audit
  trail, download, ``load_champion``), ``Lineage``, ``AuditEntry``,
  ``RegistryError``.
- ``champion`` -- ``ChampionHolder``: the verified champion of a
  long-running process (speed layer, serving), swapped in the background
  when the registry's alias moves; ``build_champion`` loads and verifies
  one version against a feature contract.
- ``errors`` -- ``ModelError``, what this package raises.

Training (``TrainParams``, ``build_model``, ``train_local``, barrier
training), the promotion gate and drift stay in ``lamina.batch``. Nothing
here imports TensorFlow or MLflow at module level: importing is cheap.
"""
