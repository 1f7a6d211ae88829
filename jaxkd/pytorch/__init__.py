"""PyTorch interop: `.pth` files read safely, state_dicts to and from Flax variables for every `jaxkd.models`
architecture, and PyTorch twins of the zoo (torch imported only where they are built; docs/models.md)."""
