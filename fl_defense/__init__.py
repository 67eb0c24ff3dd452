"""fl-defense: federated backdoor attacks and server-side defenses on Flower + Ray."""

__version__ = "0.1.0"
