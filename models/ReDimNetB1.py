"""ReDimNet-B1 (models/ReDimNetFamily.py; stage table SIZES["B1"]): the authors' size B1, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B1")
