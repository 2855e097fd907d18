"""What every command-line verb shares: bad input ends in one `error:` line and exit status 1."""

import sys
from collections.abc import Callable


def run_cli(action: Callable, args):
    """Run a verb's action; a user error prints one line and exits with status 1."""
    from .assets import AssetError
    from .finetune import NonFiniteLoss  # imported here: finetune itself uses run_cli

    # PlanError, ModelError, DataError and GGUFError are ValueErrors; missing files OSErrors.
    try:
        return action(args)
    except (ValueError, OSError, MemoryError, AssetError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
