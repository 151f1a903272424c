"""Backends behind one small protocol (``base.Provider``), chosen by name from ``registry``."""
