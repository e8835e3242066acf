"""ReDimNet2-B4 (models/ReDimNet2Family.py; stage table SIZES["B4"]): the authors' size B4, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B4")
