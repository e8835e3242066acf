"""ReDimNet-B4 (models/ReDimNetFamily.py; stage table SIZES["B4"]): the authors' size B4, 72 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B4")
