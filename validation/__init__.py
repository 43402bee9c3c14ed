"""medmeta's validation package: see the README's layout tour."""
