"""Small-model routing: public names whose requests go to the cheapest tier able to answer (docs/routing-tiers.md)."""
