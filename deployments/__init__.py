"""medmeta's deployments package: see the README's layout tour."""
