"""STCN propagation (iSegFormer's MiVOS-STCN): network, FusionNet, preprocessing, propagator."""
from .fusion import FusionNet
from .network import STCNNetwork
from .propagator import STCNPropagator
from .weights import load_fusion, load_stcn

__all__ = ["FusionNet", "STCNNetwork", "STCNPropagator", "load_fusion", "load_stcn"]
