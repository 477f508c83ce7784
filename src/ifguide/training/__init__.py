"""Training with the IF-Guide suppression objective (paper Eq. 9)."""
