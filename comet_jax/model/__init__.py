"""Backbone blocks, memory nets and schedules (pure functions over parameter pytrees)."""
