-- The retraining policy reads each user's most recent trained actuals on every retrain (the
-- validation gate's window) and on every rebuild (the rebuild window): newest first, by user.
CREATE INDEX refit_consumed_user_recent
    ON refit_consumed_actuals (user_id, actual_id DESC)
    WHERE outcome <> 'set_aside';
