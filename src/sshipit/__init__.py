"""sshipit: ship build output to servers over SSH and run the commands that bring it live."""

__version__ = "0.1.0"
