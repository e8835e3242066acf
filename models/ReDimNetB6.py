"""ReDimNet-B6 (models/ReDimNetFamily.py; stage table SIZES["B6"]): the authors' size B6, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B6")
