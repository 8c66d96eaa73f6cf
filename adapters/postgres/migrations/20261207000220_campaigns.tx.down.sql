DROP TABLE IF EXISTS campaign_members;
DROP TABLE IF EXISTS campaigns;
