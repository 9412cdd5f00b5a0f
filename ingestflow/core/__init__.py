"""The floor: settings, value types, errors, progress and the plugin registry.

Everything in the project may import this package, and it imports nothing of the project,
so importing it never pulls in Prefect, the database or the service.
"""
