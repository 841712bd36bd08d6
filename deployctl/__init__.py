"""deployctl: deploy one artifact to every node, prove every node runs it, gate traffic until they all do."""

__version__ = "0.1.0"
