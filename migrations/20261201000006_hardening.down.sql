DROP TABLE IF EXISTS refit_unconsumable_actuals;
