"""ReDimNet2-B1 (models/ReDimNet2Family.py; stage table SIZES["B1"]): the authors' size B1, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B1")
