"""ReDimNet-B5 (models/ReDimNetFamily.py; stage table SIZES["B5"]): the authors' size B5, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B5")
