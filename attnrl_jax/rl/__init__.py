"""RL core: per-problem trees and advantages, adaptive sampling (ADS), the policy loss."""
