"""Batch layer (issue 3): Spark batch views as time tiles (``views``,
``tiles``, ``events``, ``published``, ``vacuum``), point-in-time training
sets (``training_set``), training (``model``: parameters, the MLP and
in-process training; ``distributed``: Spark barrier training), the
promotion gate (``evaluate``), drift (``drift``) and the commands the CLI
and DAGs call (``commands``). Reads the master dataset through
lamina.master. Loading, saving and scoring a model, its model card and the
registry client are in lamina.models, which the speed layer and serving
share."""
