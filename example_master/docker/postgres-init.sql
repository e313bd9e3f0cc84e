-- One database per service of docker-compose.yml: the master's, and one for each replica service.
-- The postgres image runs this file once, when its data volume is created.
CREATE DATABASE library;
CREATE DATABASE my_replica;
CREATE DATABASE analytics_replica;
