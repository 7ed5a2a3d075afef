"""Batch layer: Spark batch views as time tiles, point-in-time training
sets, retraining (issue 3). Reads the master dataset through lamina.master."""
