"""The built-in object stores: ``local`` (file), ``s3``, ``gcs`` (gs) and ``azure`` (az).

Each module registers its scheme with ``storage.objectstore.register_store`` when imported;
``store_for`` imports them on first use. Cloud SDKs are imported inside the functions that
need them, so importing a store module is cheap.
"""
