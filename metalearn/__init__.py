"""medmeta's metalearn package: see the README's layout tour."""
