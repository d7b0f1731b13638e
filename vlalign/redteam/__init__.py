"""Red-teaming: an attack library (typographic, image perturbations, prompt templates) and an automated
attacker loop whose successful attacks become training data (`vlalign redteam`)."""
