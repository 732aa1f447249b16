"""DiLoCo adapter: replicas on several clusters, each training with an inner backend (TRL), synced by torchft.

composer_diloco.replica runs one replica (torchft's Manager and DiLoCo around the TRL backend's job, through the
backend registry and composer_core.outer_loop, never importing composer_trl); composer_diloco.launcher runs a
Lighthouse and N replicas on one machine. torchft is imported only by the modules that run a replica.
"""
