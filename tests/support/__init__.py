"""Helpers shared by the test suites: local stand-ins for the services a user would run."""
