"""Pure code: desired children, status and conditions, rollout steps, drift statistics. No I/O."""
